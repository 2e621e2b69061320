"""Non-finite losses and loss spikes: detected on the step they occur, rolled back to the last
checkpoint with the offending batch skipped, counted; nothing non-finite is ever checkpointed.

The strong check: a run that rolled back over a poisoned batch ends bit-identical to a run that
was told to skip that batch from the start (so the rollback restored everything it had to).
"""
import math

import pytest
import torch

from hddm_core.storage import ArtifactStore
from hddm_core.training.checkpointing import CheckpointManager
from hddm_core.training.expert_trainer import build_loop
from hddm_core.training.guards import BadStep, LossGuard
from hddm_core.training.loop import TooManyRollbacks, epoch_order
from tests.training.tiny import SeededDataset, factory, loop_hash, tiny_config

N, B = 40, 4


def position_of(index: int, seed: int, epoch: int = 0) -> int:
    """Global batch position holding dataset index `index` in `epoch`."""
    return epoch * (N // B) + epoch_order(N, seed, epoch).index(index) // B


def pick_index(seed: int, min_pos: int, max_pos: int) -> int:
    order = epoch_order(N, seed, 0)
    return order[min_pos * B]  # first sample of batch min_pos in epoch 0


def finite_checkpoints(root: str) -> int:
    ckpt = CheckpointManager(ArtifactStore(root))
    steps = ckpt.complete_steps()
    for step in steps:
        c = ckpt.load(step)
        for group in c.tensors.values():
            for t in group.values():
                assert not t.is_floating_point() or bool(torch.isfinite(t).all()), f"non-finite in step {step}"
    return len(steps)


@pytest.mark.parametrize("kind,factor,overrides", [
    ("non-finite loss", float("nan"), {}),
    ("loss spike", 1e3, {"spike_factor": 5.0, "spike_window": 3}),
])
def test_bad_batch_rolled_back_skipped_and_equal_to_preskipped_run(tmp_path, kind, factor, overrides):
    cfg = tiny_config(steps=8, keep_checkpoints=10, **overrides)  # 8 steps < 10 batches: one epoch
    index = pick_index(cfg.seed, 5, 9)
    pos = position_of(index, cfg.seed)
    assert pos == 5
    root = str(tmp_path / "poisoned")
    loop = build_loop(cfg, SeededDataset(poison={index: factor}), root, model_factory=factory)
    result = loop.run()
    assert result.status == "completed" and result.step == cfg.steps
    assert [(r["position"], r["reason"].split(" >")[0]) for r in result.rollbacks] == [(pos, kind)]
    assert result.rollbacks[0]["step"] == pos  # detected on the very step that saw the batch
    assert all(math.isfinite(v) for v in result.losses)
    assert finite_checkpoints(root) >= 4

    clean = build_loop(cfg, SeededDataset(), str(tmp_path / "preskipped"), model_factory=factory,
                       skip_positions={pos})
    clean.run()
    assert loop_hash(loop) == loop_hash(clean)
    unskipped = build_loop(cfg, SeededDataset(), str(tmp_path / "plain"), model_factory=factory)
    unskipped.run()
    assert loop_hash(unskipped) != loop_hash(loop)  # control: the skip changed the trajectory


def test_rollback_survives_resume(tmp_path):
    cfg = tiny_config(steps=8)
    index = pick_index(cfg.seed, 5, 9)
    root = str(tmp_path / "r")
    first = build_loop(cfg, SeededDataset(poison={index: float("nan")}), root, model_factory=factory)
    first.run(until_step=7)  # after the rollback at step 5
    assert len(first.rollbacks) == 1
    again = build_loop(cfg, SeededDataset(poison={index: float("nan")}), root, model_factory=factory)
    assert again.resume()
    assert again.skipped == {5} and len(again.rollbacks) == 1
    again.run()
    full = build_loop(cfg, SeededDataset(poison={index: float("nan")}), str(tmp_path / "full"), model_factory=factory)
    full.run()
    assert loop_hash(again) == loop_hash(full)


def test_nothing_non_finite_is_checkpointed(tmp_path):
    cfg = tiny_config(steps=4)
    root = str(tmp_path / "nan")
    loop = build_loop(cfg, SeededDataset(), root, model_factory=factory)
    loop.run(until_step=2)
    before = loop.ckpt.complete_steps()
    with torch.no_grad():
        next(loop.model.parameters())[0].fill_(float("inf"))
    loop.step = 3
    with pytest.raises(BadStep, match="non-finite value in the state"):
        loop.save()
    assert loop.ckpt.complete_steps() == before and loop.ckpt.latest_step() == 2


def test_too_many_rollbacks_raise(tmp_path):
    cfg = tiny_config(steps=8, max_rollbacks=1)
    order = epoch_order(N, cfg.seed, 0)
    poison = {order[2 * B]: float("nan"), order[4 * B]: float("nan")}
    loop = build_loop(cfg, SeededDataset(poison=poison), str(tmp_path / "m"), model_factory=factory)
    with pytest.raises(TooManyRollbacks, match="max_rollbacks=1"):
        loop.run()


def test_guard_unit():
    g = LossGuard(factor=4.0, window=3)
    for v in (1.0, 2.0, 1.5):
        g.check_loss(v)
        g.accept(v)
    g.check_loss(5.9)  # < 4 x median 1.5
    with pytest.raises(BadStep, match="spike"):
        g.check_loss(6.1)
    with pytest.raises(BadStep, match="non-finite loss"):
        g.check_loss(float("inf"))
    with pytest.raises(BadStep, match="gradient"):
        g.check_grad_norm(float("nan"))
    off = LossGuard(factor=0.0, window=1)
    off.accept(1.0)
    off.check_loss(1e9)
