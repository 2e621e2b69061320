"""Self-describing checkpoints: the expert/router manifest schema, pickle refusal, validation, safetensors I/O, DiT import.

Contributed weights are untrusted. Loading never unpickles: .pt/.pth/.ckpt/.bin/.pkl files and files
with a pickle's or a torch.save archive's structure are refused (pickle_guard); the manifest
(manifest), its architecture bounds and the size it implies by formula (limits), and the safetensors
header (header) are checked before any tensor is read or model built, then shapes, sha256 and
finiteness (weights_checks, validate), within a wall-clock budget. Every failed Check carries a
reason code (docs/security.md lists them). validate_expert() returns every check; load_expert()
raises CheckpointError listing the failed ones (io). Import the public names from here:

    from hddm_core.checkpoints import save_expert, load_expert, validate_expert
"""
from hddm_core.checkpoints.dit_import import (ConversionReport, ConversionResult, convert_dit_checkpoint,
                                              convert_dit_state_dict, import_dit_expert, inspect_dit_state_dict,
                                              load_dit_state_dict)
from hddm_core.checkpoints.errors import Check, CheckpointError, PickleRefused
from hddm_core.checkpoints.io import (LoadedExpert, LoadedRouter, load_expert, load_router, save_expert, save_router,
                                      velocity_expert_from_loaded)
from hddm_core.checkpoints.manifest import FORMAT_VERSION, KINDS, LATENT_SPACES, ExpertManifest, RouterManifest
from hddm_core.checkpoints.pickle_guard import PICKLE_SUFFIXES
from hddm_core.checkpoints.validate import (DEFAULT_MAX_WEIGHT_BYTES, DEFAULT_TIME_BUDGET_S, ValidatedFiles, inspect_checkpoint, inspect_expert,
                                            validate_checkpoint, validate_expert, validate_router)

__all__ = [
    "Check", "CheckpointError", "ConversionReport", "ConversionResult", "DEFAULT_MAX_WEIGHT_BYTES",
    "DEFAULT_TIME_BUDGET_S", "ExpertManifest",
    "FORMAT_VERSION", "KINDS", "LATENT_SPACES", "LoadedExpert", "LoadedRouter", "PICKLE_SUFFIXES", "PickleRefused",
    "RouterManifest", "ValidatedFiles", "convert_dit_checkpoint", "convert_dit_state_dict", "import_dit_expert",
    "inspect_checkpoint", "inspect_dit_state_dict", "inspect_expert", "load_dit_state_dict", "load_expert",
    "load_router", "save_expert", "save_router", "validate_checkpoint", "validate_expert", "validate_router",
    "velocity_expert_from_loaded",
]
