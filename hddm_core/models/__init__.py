"""Networks: the expert DiT (AdaLN-Single, cross-attention) and the router (DiT classifier)."""
from .dit import DiTExpert, build_expert_model, count_parameters, flops_per_forward, meta_parameter_count
from .presets import PRESET_NAMES, DiTConfig, RouterConfig, expert_config, router_config
from .router import Router, build_router

__all__ = ["DiTExpert", "Router", "DiTConfig", "RouterConfig", "PRESET_NAMES", "build_expert_model", "build_router",
           "expert_config", "router_config", "count_parameters", "meta_parameter_count", "flops_per_forward"]
