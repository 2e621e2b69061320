"""Fixtures for orchestration tests: tiny pipeline parameters, one Prefect harness per session."""
from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # prefect.yaml's folder


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)  # tiny models; spinning intra-op threads are pathological on a shared CPU


def tiny_params(root: str, **overrides):
    """The pipeline at the smallest size that still runs every stage for real."""
    from hddm_core.pipeline.params import (ClusterParams, DownloadParams, EmbeddedParams, EmbedParams, EvaluateParams,
                                  PipelineParams, PrepareParams, TrainingParams, TrainRouterParams)

    training = TrainingParams(architecture="tiny-16", steps=4, batch_size=4, checkpoint_interval=2, ema_decay=0.5)
    fields = dict(
        artifact_root=root,
        download=DownloadParams(embedded=EmbeddedParams(size=16, limit=16), image_size=16, thread_count=4),
        embed=EmbedParams(batch_size=16),
        cluster=ClusterParams(n_clusters=2, n_iter=5, balance=True),
        prepare=PrepareParams(resolution=8, max_length=8, batch_size=16),
        objectives=["ddpm-eps", "flow-matching"],
        expert_training=training,
        router=TrainRouterParams(training=training, eval_samples_per_bucket=2),
        evaluate=EvaluateParams(n_prompts=2, images_per_prompt=2, steps=2, fd_dims=2, reference_images=6,
                                routing_modes=["top-1", "threshold"]),
    )
    fields.update(overrides)
    return PipelineParams(**fields)


def tiny_expert(folder, objective="flow-matching", cluster_id=1) -> str:
    """A saved tiny-16 expert (safetensors + manifest) in `folder`; returns its path."""
    import torch

    from hddm_core.checkpoints import save_expert
    from hddm_core.models.dit import build_expert_model
    from hddm_core.models.presets import expert_config

    torch.manual_seed(0)
    model = build_expert_model(expert_config("tiny-16", input_size=8))
    return save_expert(str(folder), "expert", model, {"objective": objective, "cluster_id": cluster_id,
                                                        "text_encoder": "all-MiniLM-L6-v2",
                                                        "latent_space": "pixel", "data_hash": "test"})


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    # None: wait as long as PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS says (tests/conftest.py sets
    # the project's default, hddm_flows.environment; a user's own value wins)
    with prefect_test_harness(server_startup_timeout=None):
        yield


def prepared_run(root: str, **overrides):
    """The tiny pipeline's data stages run in this process (no Prefect): the PipelineParams, ready for
    train-expert and evaluate runs."""
    from hddm_core.pipeline import stages

    params = tiny_params(root, **overrides)
    for name, sub in (("download", params.download), ("recaption", params.recaption), ("embed", params.embed),
                      ("cluster", params.cluster), ("prepare", params.prepare)):
        stages.STAGES[name](params.stage(sub))
    return params


def wait_for(predicate, timeout: float, what: str, poll: float = 2.0):
    """predicate()'s first truthy value, polled until `timeout` seconds; AssertionError naming `what`."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
