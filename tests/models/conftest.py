import pytest
import torch

from hddm_core.models import build_expert_model, expert_config


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Non-zero weights everywhere (zero-initialised heads and projections would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def tiny16():
    torch.manual_seed(0)
    return randomize(build_expert_model(expert_config("tiny-16"))).eval()
