"""Networks: the expert DiT (AdaLN-Single, cross-attention) and the router (DiT classifier)."""
from hddm_core.models.dit import DiTExpert, build_expert_model, count_parameters, flops_per_forward, meta_parameter_count
from hddm_core.models.presets import PRESET_NAMES, DiTConfig, RouterConfig, expert_config, router_config
from hddm_core.models.router import Router, build_router

__all__ = ["DiTExpert", "Router", "DiTConfig", "RouterConfig", "PRESET_NAMES", "build_expert_model", "build_router",
           "expert_config", "router_config", "count_parameters", "meta_parameter_count", "flops_per_forward"]
