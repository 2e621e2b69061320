"""Test-wide settings: the project's process defaults (offline, no telemetry, a Prefect start-up timeout a
loaded machine meets: hddm_flows.environment) and private Prefect/HF/torch homes, set before imports."""
import os
import tempfile

from hddm_flows.environment import apply_defaults

_HOME = tempfile.mkdtemp(prefix="hddm-test-home-")
apply_defaults(PREFECT_HOME=os.path.join(_HOME, "prefect"), HF_HOME=os.path.join(_HOME, "hf"),
               TORCH_HOME=os.path.join(_HOME, "torch"), MPLBACKEND="Agg")


_INIT_NAMES = ("uniform_", "normal_", "constant_", "ones_", "zeros_", "xavier_uniform_", "xavier_normal_",
               "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_")


def _torch_globals():
    import torch

    return {"default dtype": torch.get_default_dtype(), "grad enabled": torch.is_grad_enabled(),
            "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
            **{f"torch.nn.init.{n}": getattr(torch.nn.init, n) for n in _INIT_NAMES}}


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_global_state_is_left_as_found():
    """torch's process-wide state (default dtype, nn.init functions - which model loaders patch while
    they load - grad mode) must be the same after every test: a leak would silently change every model
    built later in the process (a DiT whose zero-init was skipped). Restores it and fails the test that
    leaked it."""
    import torch

    before = _torch_globals()
    yield
    after = _torch_globals()
    leaked = {k: (before[k], after[k]) for k in before if after[k] is not before[k] and after[k] != before[k]}
    if leaked:
        torch.set_default_dtype(before["default dtype"])
        torch.set_grad_enabled(before["grad enabled"])
        torch.use_deterministic_algorithms(before["deterministic algorithms"])
        for n in _INIT_NAMES:
            setattr(torch.nn.init, n, before[f"torch.nn.init.{n}"])
        pytest.fail(f"this test left torch's global state changed: {leaked}")
