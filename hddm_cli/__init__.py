"""The `hddmp` command line: one entry point over hddm_core (plain) and the Prefect flows."""
