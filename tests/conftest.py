"""Test-wide settings: offline, no telemetry, private Prefect/HF/torch homes (set before imports)."""
import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="hddm-test-home-")
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_HOME": os.path.join(_HOME, "prefect"),
    "HF_HOME": os.path.join(_HOME, "hf"),
    "TORCH_HOME": os.path.join(_HOME, "torch"),
    "MPLBACKEND": "Agg",
}.items():
    os.environ.setdefault(key, value)
