"""The contributor's path: fetch a published run, assign data, check compatibility, register and submit an expert."""
