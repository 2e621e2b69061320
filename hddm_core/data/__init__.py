"""Data stages: the embedded OpenMoji dataset, the guarded img2dataset download, and shard readers."""
