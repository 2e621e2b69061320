"""Test-wide settings: the project's process defaults (offline, no telemetry, a Prefect start-up timeout a
loaded machine meets: hddm_flows.environment) and private Prefect/HF/torch homes, set before imports."""
import os
import tempfile

from hddm_flows.environment import apply_defaults

_HOME = tempfile.mkdtemp(prefix="hddm-test-home-")
apply_defaults(PREFECT_HOME=os.path.join(_HOME, "prefect"), HF_HOME=os.path.join(_HOME, "hf"),
               TORCH_HOME=os.path.join(_HOME, "torch"), MPLBACKEND="Agg")
