"""Atomic, verifiable training checkpoints in the artifact store (safetensors + JSON, no pickle).

Layout under a prefix (default "checkpoints"):
    step-000000120/<name>.safetensors ...   tensors (model, EMA, optimiser, RNG, loss history)
    step-000000120/<extra files>            config.json, loss_curve.png
    step-000000120/state.json               written LAST in the folder: step, metadata, sha256 of
                                            every other file -> the folder is complete iff present
    latest.json                             pointer {"step", "dir"}, written after the folder

Every file goes through ArtifactStore.open_write (temp key, fsync, rename / server-side copy), so
a kill at any moment leaves the previous pointer and folder intact; loading verifies every hash
and falls back to the newest older complete checkpoint if one does not verify.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
POINTER_FILE = "latest.json"
_STEP_DIR = re.compile(r"^step-(\d{9})$")
CHECKPOINT_VERSION = 1


class CorruptCheckpoint(RuntimeError):
    pass


@dataclass
class Checkpoint:
    step: int
    dir: str
    tensors: dict[str, dict[str, torch.Tensor]]  # file name (no extension) -> tensors
    meta: dict


def step_dir(step: int) -> str:
    return f"step-{step:09d}"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """AdamW-style state dict -> flat tensors 'idx.name' + JSON-able param groups (no pickle)."""
    sd = optimizer.state_dict()
    tensors = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous().clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    fixed = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    optimizer.load_state_dict({"state": state, "param_groups": fixed})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointManager:
    """Save / find / load checkpoints under `prefix` of an ArtifactStore.

    fault_hook(stage) is called at named points of a save ("partial:<file>" after half of a file's
    bytes went to its temp key, "before-state", "before-pointer", "after-pointer"): tests use it to
    kill the process mid-write; production leaves it None.
    """

    def __init__(self, store: ArtifactStore, prefix: str = "checkpoints", keep: int = 2,
                 fault_hook: Callable[[str], None] | None = None):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.store, self.prefix, self.keep, self.fault_hook = store, prefix.strip("/"), keep, fault_hook

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix,) + parts)

    def _hook(self, stage: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(stage)

    def _write(self, key: str, data: bytes, name: str) -> None:
        with self.store.open_write(key) as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            self._hook(f"partial:{name}")
            f.write(data[half:])

    # -- save ------------------------------------------------------------------------------
    def save(self, step: int, tensors: dict[str, dict[str, torch.Tensor]], meta: dict,
             extras: dict[str, bytes] | None = None) -> str:
        """Write one complete checkpoint, then move the pointer to it; returns its folder key."""
        folder = step_dir(step)
        if self.store.exists(self._key(folder, STATE_FILE)):
            self.store.delete(self._key(folder, STATE_FILE))  # being rewritten: incomplete until done
        hashes = {}
        for name, group in tensors.items():
            data = st_save({k: v.detach().cpu().contiguous() for k, v in group.items()})
            fname = f"{name}.safetensors"
            self._write(self._key(folder, fname), data, fname)
            hashes[fname] = _sha256(data)
        for fname, data in (extras or {}).items():
            self._write(self._key(folder, fname), data, fname)
            hashes[fname] = _sha256(data)
        self._hook("before-state")
        state = {"version": CHECKPOINT_VERSION, "step": step, "files": hashes, "meta": meta}
        self._write(self._key(folder, STATE_FILE), json.dumps(state, sort_keys=True).encode(), STATE_FILE)
        self._hook("before-pointer")
        self._write(self._key(POINTER_FILE), json.dumps({"step": step, "dir": folder}).encode(), POINTER_FILE)
        self._hook("after-pointer")
        self._prune(keep_step=step)
        return self._key(folder)

    def _prune(self, keep_step: int) -> None:
        complete = self.complete_steps()
        keep = set(complete[-self.keep:]) | {keep_step}
        for step in complete:
            if step not in keep:
                self.store.delete(self._key(step_dir(step), STATE_FILE))  # incomplete first
                self.store.delete(self._key(step_dir(step)))

    # -- find and load ---------------------------------------------------------------------
    def complete_steps(self) -> list[int]:
        steps = []
        for key in self.store.list(self.prefix):
            parts = key[len(self.prefix) + 1:].split("/")
            if len(parts) == 2 and parts[1] == STATE_FILE and (m := _STEP_DIR.match(parts[0])):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest_step(self) -> int | None:
        key = self._key(POINTER_FILE)
        if not self.store.exists(key):
            return None
        return int(self.store.read_json(key)["step"])

    def load(self, step: int) -> Checkpoint:
        folder = step_dir(step)
        try:
            state = json.loads(self.store.read_bytes(self._key(folder, STATE_FILE)))
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{self.store.uri(self._key(folder))}: no {STATE_FILE} (incomplete)") from None
        if state.get("version") != CHECKPOINT_VERSION or state.get("step") != step:
            raise CorruptCheckpoint(f"{self.store.uri(self._key(folder))}: bad state header {state.get('version')!r}/{state.get('step')!r}")
        tensors = {}
        for fname, digest in state["files"].items():
            try:
                data = self.store.read_bytes(self._key(folder, fname))
            except FileNotFoundError:
                raise CorruptCheckpoint(f"{self.store.uri(self._key(folder, fname))}: missing") from None
            if _sha256(data) != digest:
                raise CorruptCheckpoint(f"{self.store.uri(self._key(folder, fname))}: sha256 mismatch")
            if fname.endswith(".safetensors"):
                tensors[fname[: -len(".safetensors")]] = st_load(data)
        return Checkpoint(step=step, dir=self._key(folder), tensors=tensors, meta=state["meta"])

    def load_latest(self) -> Checkpoint | None:
        """The pointer's checkpoint, or the newest older one that verifies; None if there is none."""
        candidates = self.complete_steps()
        pointer = self.latest_step()
        if pointer is not None:
            candidates = [s for s in candidates if s <= pointer]
        for step in reversed(candidates):
            try:
                return self.load(step)
            except CorruptCheckpoint as err:
                log.warning("skipping checkpoint: %s", err)
        return None
