"""Does an expert fit a run? The checks a contributed expert must pass before it joins the ensemble.

An expert is mixed with the others in one velocity space (hddm_core.diffusion.conversion), so it must read
and write the same latents as the run (latent space, scale, resolution and latent shape), read the
same text tokens (encoder and width), and belong to one of the run's clusters under the run's
clustering (its version is the content hash of the published centroids, so experts trained on an
older clustering are refused rather than routed to the wrong data).

    expected = RunExpectations.from_card(card)          # card: published_run.fetch_clustering's JSON
    vetting = vet_expert("my-expert/", expected)        # schema, weights, smoke forward, compatibility
    refusals = [c for c in vetting.checks if not c.ok]

The expert is read, hashed and smoke-forwarded once: vet_expert's result (with keep_bytes, the exact
bytes validated) is what registration stores (hddm_core.contrib.registration.register_expert(vetted=...)).

Each failed compatibility check names the field, the value given and what the run expects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hddm_core.checkpoints import (Check, CheckpointError, ExpertManifest, LoadedExpert, PickleRefused, load_expert,
                                   velocity_expert_from_loaded)
from hddm_core.data.factories import encoder_base_name

CLUSTERING_VERSION_PREFIX = "centroids-sha256:"


def clustering_version_from_sha(centroids_sha256: str) -> str:
    """The clustering version: the content hash of the published centroids (every level + parents)."""
    if len(centroids_sha256) != 64:
        raise ValueError(f"expected a sha256 hex digest of centroids.safetensors, got {centroids_sha256!r:.80}")
    return CLUSTERING_VERSION_PREFIX + centroids_sha256[:16]


@dataclass(frozen=True)
class RunExpectations:
    """What every expert of a run must declare (read from the run's prepare and cluster manifests)."""

    latent_space: str
    latent_scale: float
    image_resolution: int
    latent_shape: tuple[int, int, int]  # [C, H, W] the expert reads and writes
    text_encoder: str
    text_dim: int
    n_clusters: int
    clustering_version: str

    @classmethod
    def from_card(cls, card: dict) -> "RunExpectations":
        try:
            latent, text = card["latent"], card["text"]
            scale, resolution = float(latent["scale"]), latent["resolution"]
            if not (math.isfinite(scale) and 0 < scale <= 1e3):
                raise ValueError(f"latent scale {scale!r} is not a finite number in (0, 1000]")
            if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= 16384:
                raise ValueError(f"latent resolution {resolution!r:.40} is not an integer in [1, 16384] pixels")
            return cls(latent_space=str(latent["space"]), latent_scale=scale,
                       image_resolution=int(latent["resolution"]),
                       latent_shape=tuple(int(v) for v in latent["latent_shape"]),
                       text_encoder=str(text["encoder"]), text_dim=int(text["width"]),
                       n_clusters=int(card["n_clusters"]), clustering_version=str(card["clustering_version"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"published run card is incomplete or malformed ({exc!r}); fetch it again with "
                             "`hddmp contrib fetch`") from None


def _refusal(field: str, given, expected) -> str:
    return f"{field} is {given!r} but the run expects {expected!r}"


def compatibility_checks(manifest: ExpertManifest, expected: RunExpectations,
                         cluster_id: int | None = None) -> list[Check]:
    """One Check per field; a failed one says which field, the value given and what the run expects.

    cluster_id: the cluster the contributor says it trained for (when given, it must equal the
    manifest's)."""
    config = manifest.config
    shape = (int(config.get("in_channels", -1)), int(config.get("input_size", -1)), int(config.get("input_size", -1)))
    pairs = [
        ("latent_space", manifest.latent_space == expected.latent_space, manifest.latent_space, expected.latent_space),
        ("latent_scale", math.isclose(manifest.latent_scale, expected.latent_scale, rel_tol=1e-6),
         manifest.latent_scale, expected.latent_scale),
        ("image_resolution", manifest.image_resolution == expected.image_resolution, manifest.image_resolution,
         expected.image_resolution),
        ("latent_shape", shape == tuple(expected.latent_shape), list(shape), list(expected.latent_shape)),
        ("text_encoder", encoder_base_name(manifest.text_encoder) == encoder_base_name(expected.text_encoder),
         manifest.text_encoder, expected.text_encoder),
        ("text_dim", manifest.text_dim == expected.text_dim, manifest.text_dim, expected.text_dim),
        ("clustering_version", manifest.clustering_version == expected.clustering_version,
         manifest.clustering_version, expected.clustering_version),
    ]
    checks = [Check(f"compatible:{name}", ok, f"{given!r}" if ok else _refusal(name, given, want))
              for name, ok, given, want in pairs]
    cid = manifest.cluster_id
    valid = list(range(expected.n_clusters))
    if cid is None or cid not in valid:
        checks.append(Check("compatible:cluster_id", False,
                            f"cluster_id is {cid!r} but the run expects one of its clusters {valid[0]}..{valid[-1]}"))
    elif cluster_id is not None and cid != int(cluster_id):
        checks.append(Check("compatible:cluster_id", False, f"cluster_id is {cid!r} in the expert's manifest but "
                                                            f"{int(cluster_id)} was claimed for it"))
    else:
        checks.append(Check("compatible:cluster_id", True, f"{cid} of {expected.n_clusters}"))
    return checks


def registry_smoke_forward(loaded: LoadedExpert) -> Check:
    """The register-expert stage's own smoke forward (hddm_core.contrib.registration): the network on random inputs."""
    from hddm_core.contrib.registration import smoke_forward as network_smoke

    try:
        return Check("smoke-forward", True, network_smoke(loaded.model, loaded.manifest))
    except Exception as exc:  # untrusted network: report any failure as a failed check
        return Check("smoke-forward", False, f"{type(exc).__name__}: {exc}")


def velocity_smoke(loaded: LoadedExpert, *, batch: int = 2, tokens: int = 8, seed: int = 0) -> Check:
    """Evaluate a loaded expert's velocity at low, mid and high noise on seeded random inputs of its
    declared shapes: the output must have the input's shape and be finite."""
    cfg = loaded.model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)  # [B, C, H, W]
    cond = {"tokens": torch.randn(batch, tokens, cfg.text_dim, generator=gen),  # [B, L, D]
            "mask": torch.ones(batch, tokens, dtype=torch.bool)}
    field = velocity_expert_from_loaded(loaded)
    with torch.inference_mode():
        for t in (0.05, 0.5, 0.95):
            try:
                v = field(x, torch.full((batch,), t), cond)  # [B, C, H, W]
            except Exception as exc:  # an untrusted network may fail in any way: report it, do not crash
                return Check("velocity-field", False, f"forward at t={t} raised {type(exc).__name__}: {exc}")
            if tuple(v.shape) != tuple(x.shape):
                return Check("velocity-field", False, f"velocity at t={t} has shape {tuple(v.shape)}, "
                                                     f"expected {tuple(x.shape)}")
            if not bool(torch.isfinite(v).all()):
                return Check("velocity-field", False, f"velocity at t={t} has NaN/Inf")
    return Check("velocity-field", True, f"velocity finite with shape {list(x.shape)} at t = 0.05, 0.5, 0.95")


@dataclass
class Vetting:
    """Every check run on a contributed expert, and the expert loaded once (None when it failed validation)."""

    checks: list[Check]
    loaded: LoadedExpert | None

    @property
    def ok(self) -> bool:
        return self.loaded is not None and all(c.ok for c in self.checks)


def vet_expert(location, expected: RunExpectations | None = None, *, cluster_id: int | None = None,
               keep_bytes: bool = False) -> Vetting:
    """Every check the pipeline runs on a contributed expert, reading, hashing and smoke-forwarding it once.

    Schema, size, header, shapes, dtypes, sha256 and finiteness (hddm_core.checkpoints), the
    register-expert stage's smoke forward (hddm_core.contrib.registration), the velocity field on the
    sampler's path at low/mid/high noise (what the ensemble will call), and, when the run's expectations
    are given, compatibility with the run. keep_bytes keeps the exact bytes validated (for storing them).
    Raises only for pickle files (PickleRefused, nothing unpickled) and missing files."""
    try:
        loaded = load_expert(location, keep_bytes=keep_bytes)
    except PickleRefused:
        raise
    except CheckpointError as exc:
        return Vetting(exc.checks or [Check("schema", False, str(exc))], None)
    checks = list(loaded.checks) + [registry_smoke_forward(loaded), velocity_smoke(loaded)]
    if expected is not None:
        checks += compatibility_checks(loaded.manifest, expected, cluster_id)
    return Vetting(checks, loaded)


def expert_checks(location, expected: RunExpectations | None = None, *,
                  cluster_id: int | None = None) -> tuple[list[Check], ExpertManifest | None]:
    """(every check vet_expert runs, the expert's manifest or None)."""
    vetting = vet_expert(location, expected, cluster_id=cluster_id)
    return vetting.checks, (vetting.loaded.manifest if vetting.loaded is not None else None)
