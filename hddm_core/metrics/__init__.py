"""Evaluation metrics: FID (real Inception-v3), LPIPS intra-prompt diversity, CLIP score, expert usage.

Every metric returns a MetricResult: a value with its exact name, or status "unavailable" with the
reason (missing weights), never a number computed with random weights.
"""
from hddm_core.metrics.result import MetricResult

__all__ = ["MetricResult"]
