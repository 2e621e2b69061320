"""Heterogeneous inference: routing modes, the sparse ensemble sampler, checkpoint loading,
native DDIM sampling."""
from hddm_core.inference.ensemble_sampler import EnsembleResult, sample_ensemble, velocity_at_shared_t
from hddm_core.inference.pool import EnsembleMember, ExpertPool, check_compatible
from hddm_core.inference.routing import Routing, routing_weights

__all__ = ["sample_ensemble", "EnsembleResult", "EnsembleMember", "ExpertPool", "check_compatible", "Routing",
           "routing_weights", "velocity_at_shared_t"]
