"""`hddmp demo`: the whole pipeline on the embedded default, in this process, on CPU.

What it runs (stated, not implied): the embedded emoji dataset rendered from installed fonts and
served on 127.0.0.1, downloaded through img2dataset (the loopback allowlisted for that run only);
passthrough captions (the Unicode names; no captioning model is available offline); Inception-v3
FID features (not DINOv2, whose weights are not available offline); hierarchical k-means into K=4
clusters; 16 x 16 pixel-space latents and all-MiniLM-L6-v2 text tokens; 4 tiny-16 DiT experts,
alternating ddpm-eps and flow-matching; a tiny router; ensemble sampling per routing mode (top-1,
top-2, full, threshold FM-first); the evaluation report. A second run reuses every finished stage.
"""
from __future__ import annotations

import os

from hddm_core.pipeline.params import demo_params
from hddm_flows.environment import apply_defaults


def run_demo(out: str) -> str:
    """Run (or reuse) the pipeline under `out`; returns the report's path. The flow runs against
    Prefect's ephemeral API, started here: its start-up timeout is set first (hddm_flows.environment)."""
    apply_defaults(MPLBACKEND="Agg")
    import torch

    # Tiny models gain nothing from intra-op threads, and on a shared CPU spinning threads cost 20x
    # (measured here: 45 ms vs 2.4 ms for one small matmul with 2 threads vs 1 under load).
    torch.set_num_threads(int(os.environ.get("HDDM_TORCH_THREADS", "1")))
    from hddm_flows.pipeline import pipeline

    print(__doc__.split("\n\n", 1)[1].strip() + "\n", flush=True)
    result = pipeline(demo_params(out))
    report = result["report"]
    return report[len("file://"):] if report.startswith("file://") else report
