"""A 3-cluster Gaussian mixture with ideal experts of mixed prediction types, schedules and time inputs."""
import pytest
import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.oracles.gaussian_mixture import GaussianMixture
from hddm_core.inference.pool import EnsembleExpertHandle

MIXED = [
    ExpertDeclaration("eps", "ddpm-linear", "discrete-999"),  # a DDPM expert as converted DiTs read time
    ExpertDeclaration("velocity", "linear", "continuous"),  # a flow-matching expert
    ExpertDeclaration("x0", "cosine", "scaled-1000"),
]


@pytest.fixture(scope="session")
def mixture():
    return GaussianMixture(means=(-2.0, 0.5, 3.0), stds=(0.5, 0.4, 0.7), weights=(0.3, 0.2, 0.5), dim=2)


class CountingNetwork:
    """Wraps a network and records (rows) of every call, independently of the sampler's own counts."""

    def __init__(self, network):
        self.network, self.calls = network, []

    def __call__(self, x, t_net, cond=None):
        self.calls.append(x.shape[0])
        return self.network(x, t_net, cond)


@pytest.fixture
def mixed_members(mixture):
    return [EnsembleExpertHandle(f"cluster{k}-{d.prediction}", d, CountingNetwork(mixture.expert_network(k, d)))
            for k, d in enumerate(MIXED)]


def float64_samples(result):
    return result.samples.double()


torch.set_default_dtype(torch.float32)
