"""Training loops: one expert per cluster on one device, and the router; resumable, deterministic.

    from hddm_core.training import ExpertTrainConfig, train_expert
    result = train_expert(ExpertTrainConfig(cluster_id=3, objective="ddpm-eps", ...), cluster_dataset, run_uri)

Modules: config.py (frozen, validated configs), loop.py (the shared loop), expert_trainer.py,
router_trainer.py + router_eval.py, checkpointing.py (atomic safetensors + JSON checkpoints),
ema.py, guards.py (non-finite / spike detection), rng_state.py, loss_plot.py.
"""
from hddm_core.training.config import ExpertTrainConfig, LoopConfig, RouterTrainConfig
from hddm_core.training.expert_trainer import ExpertTrainResult, build_loop, train_expert
from hddm_core.training.loop import TrainingLoop, TrainResult
from hddm_core.training.router_trainer import RouterTrainResult, build_router_loop, train_router

__all__ = ["ExpertTrainConfig", "LoopConfig", "RouterTrainConfig", "train_expert", "train_router", "build_loop",
           "build_router_loop", "TrainingLoop", "TrainResult", "ExpertTrainResult", "RouterTrainResult"]
