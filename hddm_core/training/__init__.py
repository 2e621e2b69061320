"""Training loops: one expert per cluster on one device, and the router; resumable, deterministic.

Public entry points: train_expert / ExpertTrainConfig (expert_trainer.py, config.py),
train_router / RouterTrainConfig (router_trainer.py), TrainingLoop (loop.py, the shared loop),
CheckpointManager (checkpointing.py).
"""
from .config import ExpertTrainConfig, LoopConfig, RouterTrainConfig

__all__ = ["ExpertTrainConfig", "LoopConfig", "RouterTrainConfig"]
