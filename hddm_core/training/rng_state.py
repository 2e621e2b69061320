"""Every random-number state a training step can touch, as tensors + JSON (nothing pickled).

Tensors (torch CPU state, each CUDA device's state, the trainer's own generators) go to
safetensors; Python's and NumPy's states are plain integers and go to JSON.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, json) snapshot of torch CPU/CUDA, NumPy's global, Python's and named generators."""
    tensors = {"rng.torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state.clone()
    for name, gen in generators.items():
        tensors[f"rng.gen.{name}"] = gen.get_state().clone()
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # {'bit_generator': 'MT19937', 'state': {...}, ...}
    np_json = {
        "bit_generator": np_state["bit_generator"],
        "key": [int(v) for v in np_state["state"]["key"]],
        "pos": int(np_state["state"]["pos"]),
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    }
    return tensors, {"python": {"version": version, "internal": list(internal), "gauss": gauss},
                     "numpy": np_json}


def restore(tensors: dict[str, torch.Tensor], meta: dict, generators: dict[str, torch.Generator]) -> None:
    """Inverse of capture; every named generator must be present in the snapshot."""
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    for name, gen in generators.items():
        key = f"rng.gen.{name}"
        if key not in tensors:
            raise ValueError(f"checkpoint has no state for generator {name!r}; has {sorted(tensors)}")
        gen.set_state(tensors[key])
    py = meta["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npj = meta["numpy"]
    np.random.set_state({"bit_generator": npj["bit_generator"],
                         "state": {"key": np.asarray(npj["key"], dtype=np.uint32), "pos": npj["pos"]},
                         "has_gauss": npj["has_gauss"], "gauss": npj["gauss"]})


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global and Python's RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
