"""Heterogeneous inference: routing modes, the ensemble velocity field and its sampler, checkpoint
loading, native DDIM sampling."""
from hddm_core.diffusion.conversion import velocity_at_shared_t
from hddm_core.inference.ensemble_field import EnsembleVelocityField
from hddm_core.inference.ensemble_sampler import EnsembleResult, sample_ensemble
from hddm_core.inference.pool import EnsembleExpertHandle, ExpertPool, check_compatible
from hddm_core.inference.routing import Routing, routing_weights

__all__ = ["sample_ensemble", "EnsembleResult", "EnsembleExpertHandle", "ExpertPool", "check_compatible", "Routing",
           "routing_weights", "velocity_at_shared_t", "EnsembleVelocityField"]
