from tests.inference.conftest import mixed_members, mixture  # noqa: F401 (fixtures: exact Gaussian-mixture experts)
