"""Heterogeneous inference: routing modes, the sparse ensemble sampler, checkpoint loading,
native DDIM sampling, and the Gaussian-mixture closed forms used to test them."""
from .ensemble_sampler import EnsembleResult, sample_ensemble, velocity_at_shared_t
from .pool import EnsembleMember, ExpertPool, check_compatible
from .routing import Routing, routing_weights

__all__ = ["sample_ensemble", "EnsembleResult", "EnsembleMember", "ExpertPool", "check_compatible", "Routing",
           "routing_weights", "velocity_at_shared_t"]
