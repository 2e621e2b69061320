import pytest
import torch

from hddm_core.storage import ArtifactStore


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: bit-identity needs a fixed reduction order, and the CI box has 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(str(tmp_path / "run"))
