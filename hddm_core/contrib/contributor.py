"""The decentralized contributor's path (HDDM sec. 3): train an expert alone, join a published run.

A published run is an artifact root URL (local folder or s3://...) the contributor can read. The
path, each step a plain function (the `hddmp contrib ...` commands call them):

    card = fetch_clustering(run_url, "my-hddm/clustering")      # centroids + the run's settings
    assign_contribution("my-hddm/clustering", {"images": "photos/"}, "my-hddm/work")
    prepare_contribution("my-hddm/work")                        # the run's latent/text settings
    ... train with hddmp expert train --artifact-root my-hddm/work ... (hddm_core.pipeline.stages)
    submit_expert(expert_dir, "my-hddm/clustering", name="alice-cats")  # checks, then stores

Work folder layout (an ArtifactStore, any URL): embed/ and cluster/ (the contributor's own images
embedded with the run's embedder, assigned with the run's centroids: a cluster stage named like the
pipeline's, so the prepare stage reads it unchanged), prepare/ (training inputs encoded with the
run's latent space and text encoder), contribution.json (where the images came from).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from hddm_core import __version__
from hddm_core.contrib.compatibility import RunExpectations, clustering_version_from_sha, expert_checks
from hddm_core.manifests import MANIFEST_NAME, StageManifest, completed, describe_outputs, hash_config, write_manifest
from hddm_core.storage import ArtifactStore, redact_url, validate_key

log = logging.getLogger(__name__)

CARD_NAME = "clustering.json"
CARD_FORMAT = "hddm-published-clustering"
CARD_VERSION = 1
CENTROIDS_NAME = "centroids.safetensors"
CONTRIBUTION_NAME = "contribution.json"
EMBED_PREFIX, CLUSTER_PREFIX, PREPARE_PREFIX = "embed", "cluster", "prepare"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SOURCE_KINDS = ("images", "shard", "download")


@dataclass(frozen=True)
class RunLayout:
    """Stage prefixes of a published run (hddm_core.pipeline.params defaults)."""

    embed: str = "embed"
    cluster: str = "cluster"
    prepare: str = "prepare"
    experts: str = "experts/registry"

    def __post_init__(self):
        for name in ("embed", "cluster", "prepare", "experts"):
            validate_key(getattr(self, name))


class ContributionRefused(ValueError):
    """Submission refused; .checks holds every check that was run."""

    def __init__(self, message: str, checks=None):
        super().__init__(message)
        self.checks = list(checks or [])


# -- fetch ---------------------------------------------------------------------------------------
def _preprocessing(embedder: dict, latent: dict) -> dict:
    if embedder.get("backend") == "inception":
        embed = (f"RGB, bilinear resize to {embedder.get('input_size', 299)}x{embedder.get('input_size', 299)}, "
                 "uint8/128 - 1 (Inception-v3 FID network)")
    elif embedder.get("backend") == "dinov2":
        embed = f"RGB, the image processor of {embedder.get('model')} (transformers AutoImageProcessor)"
    else:
        embed = f"as the embedder {embedder.get('model')!r} defines"
    res = latent.get("resolution")
    return {"embedding": embed + "; embeddings L2-normalised before assignment",
            "latent": f"RGB, centre square crop, bicubic resize to {res}x{res}, scaled to [-1, 1]"
                      + ("" if latent.get("space") == "pixel" else f", then {latent.get('model')} x {latent.get('scale')}")}


def fetch_clustering(run_url: str, out_dir: str, *, layout: RunLayout | None = None,
                     storage_options: dict | None = None) -> dict:
    """Copy a published run's clustering and settings into out_dir (centroids.safetensors, then
    clustering.json last). Reads only finished stages (their manifests); returns the card."""
    from hddm_core.data.cluster import load_centroids
    from hddm_core.data.sharded_stage import require_manifest

    layout = layout or RunLayout()
    run = ArtifactStore(run_url, storage_options)
    cluster = require_manifest(run, layout.cluster, "cluster")
    embed = require_manifest(run, layout.embed, "embed")
    prepare = require_manifest(run, layout.prepare, "prepare")
    if CENTROIDS_NAME not in cluster.outputs:
        raise ValueError(f"{run.uri(layout.cluster)}: the cluster manifest names no {CENTROIDS_NAME}")
    raw = run.read_bytes(f"{layout.cluster}/{CENTROIDS_NAME}")
    sha = hashlib.sha256(raw).hexdigest()
    if sha != cluster.outputs[CENTROIDS_NAME]["sha256"]:
        raise ValueError(f"{run.uri(layout.cluster + '/' + CENTROIDS_NAME)}: sha256 {sha[:16]}... differs from its "
                         f"manifest's {cluster.outputs[CENTROIDS_NAME]['sha256'][:16]}...; refusing a changed file")
    out = ArtifactStore(out_dir)
    out.write_bytes(CENTROIDS_NAME, raw)
    with out.local_path(CENTROIDS_NAME) as path:
        centroids, _parents, normalize = load_centroids(path)
    latent, text = prepare.config["latent"], prepare.config["text"]
    card = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "run": redact_url(run.root),
        "layout": {"embed": layout.embed, "cluster": layout.cluster, "prepare": layout.prepare,
                   "experts": layout.experts},
        "clustering_version": clustering_version_from_sha(sha), "centroids_sha256": sha,
        "n_clusters": int(cluster.config["n_clusters"]), "level_sizes": [int(len(c)) for c in centroids],
        "embedding_dim": int(centroids[0].shape[1]), "normalize": bool(normalize),
        "assignment_rule": "nearest level-0 centroid of the normalised embedding, then the parents of each level above",
        "cluster_sizes": cluster.counts.get("sizes"), "embedder": embed.config["embedder"],
        "preprocessing": _preprocessing(embed.config["embedder"], latent), "latent": latent, "text": text,
        "caption_source": prepare.config.get("caption_source"), "run_data_hash": prepare.content_hash,
        "fetched_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), "code_version": __version__,
    }
    out.write_json(CARD_NAME, card)
    log.info("fetched clustering %s (%d clusters) from %s", card["clustering_version"], card["n_clusters"], card["run"])
    return card


def read_card(clustering_dir: str) -> dict:
    store = ArtifactStore(clustering_dir)
    if not store.exists(CARD_NAME):
        raise FileNotFoundError(f"no {CARD_NAME} in {clustering_dir}: run `hddmp contrib fetch --run URL --out "
                                f"{clustering_dir}` first")
    card = store.read_json(CARD_NAME)
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or card.get("format_version") != CARD_VERSION:
        raise ValueError(f"{store.uri(CARD_NAME)} is not a {CARD_FORMAT} v{CARD_VERSION} card")
    raw = store.read_bytes(CENTROIDS_NAME)
    if hashlib.sha256(raw).hexdigest() != card["centroids_sha256"]:
        raise ValueError(f"{store.uri(CENTROIDS_NAME)} does not match the card's centroids_sha256; fetch again")
    return card


# -- the contributor's images --------------------------------------------------------------------
def _caption_for(path: str) -> str:
    sidecar = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            return f.read().strip()
    return os.path.splitext(os.path.basename(path))[0].replace("_", " ").replace("-", " ").strip()


def _folder_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def _folder_samples(folder: str, files: list[str]) -> Iterator:
    from PIL import Image

    from hddm_core.data.image_rgb import exif_upright, to_rgb
    from hddm_core.data.shards import Sample

    for path in files:
        with Image.open(path) as im:
            image = to_rgb(exif_upright(im))
        key = os.path.relpath(path, folder).replace(os.sep, "/")
        yield Sample(key=key, image=image, caption=_caption_for(path), meta={"file": key})


def check_source(source: dict) -> dict:
    """{'images': folder} | {'shard': webdataset .tar (img2dataset/LAION layout)} | {'download': stage URL}."""
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in SOURCE_KINDS:
        raise ValueError(f"source must name exactly one of {list(SOURCE_KINDS)}, got {source!r}")
    kind, location = next(iter(source.items()))
    if not isinstance(location, str) or not location:
        raise ValueError(f"source {kind!r} needs a path or URL, got {location!r}")
    if "://" not in location:
        location = os.path.abspath(location)
    return {kind: location}


def open_source(source: dict) -> tuple[Callable[[], Iterable], str, int | None]:
    """(a function returning a fresh sample iterator, a content hash of the source, sample count or None)."""
    kind, location = next(iter(check_source(source).items()))
    if kind == "images":
        files = _folder_files(location)
        h = hashlib.sha256()
        for path in files:
            h.update(os.path.relpath(path, location).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
            sidecar = os.path.splitext(path)[0] + ".txt"
            if os.path.isfile(sidecar):
                with open(sidecar, "rb") as f:
                    h.update(b"caption" + hashlib.sha256(f.read()).digest())
        return (lambda: _folder_samples(location, files)), h.hexdigest(), len(files)
    if kind == "shard":
        import fsspec

        from hddm_core.data.shards import iter_tar_samples

        with fsspec.open(location, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()

        def samples():
            with fsspec.open(location, "rb") as f:
                yield from iter_tar_samples(f)

        return samples, digest, None
    from hddm_core.data.shards import count_download_samples, iter_download_samples
    from hddm_core.manifests import read_manifest

    parent_url, prefix = _split_url(location)
    parent = ArtifactStore(parent_url)
    manifest = read_manifest(parent, prefix)
    if manifest is None or manifest.stage != "download":
        raise FileNotFoundError(f"no finished download stage at {location}: run `hddmp data download` first")
    return (lambda: iter_download_samples(parent, prefix)), manifest.content_hash, count_download_samples(parent, prefix)


def _split_url(location: str) -> tuple[str, str]:
    """(parent URL, last segment) of a local path or URL."""
    if "://" not in location:
        location = os.path.abspath(location)
        return os.path.dirname(location), os.path.basename(location)
    head, _, tail = location.rstrip("/").rpartition("/")
    return head, tail


# -- rebuilding the run's models from the card -------------------------------------------------
def build_embedder(description: dict, *, device: str | None = None, model_path: str | None = None):
    """The run's image embedder from its manifest description; model_path overrides where the
    weights are read from (a local copy of the same model)."""
    from hddm_core.data.embed import Dinov2Embedder, InceptionFidEmbedder

    backend = description.get("backend")
    if backend == "inception":
        embedder = InceptionFidEmbedder(path=model_path, device=device)
    elif backend == "dinov2":
        embedder = Dinov2Embedder.from_pretrained(model_path or description["model"], device=device,
                                                  dtype=description.get("dtype"))
    else:
        raise ValueError(f"the run's embedder backend {backend!r} is not supported here; valid: ['inception', 'dinov2']")
    if int(embedder.dim) != int(description.get("dim", embedder.dim)):
        raise ValueError(f"embedder width {embedder.dim} but the run's embeddings are {description.get('dim')}-d")
    return embedder


def build_latent_space(description: dict, *, device: str | None = None, model_path: str | None = None):
    from hddm_core.data.latents import PixelSpace, SDVaeLatents

    space = description.get("space")
    if space == "pixel":
        latent = PixelSpace(int(description["resolution"]))
    elif space == "sd-vae":
        latent = SDVaeLatents.from_pretrained(model_path or description["model"], resolution=int(description["resolution"]),
                                              scale=float(description["scale"]), device=device)
        latent.source = description["model"]  # same model, perhaps read from a local copy
    else:
        raise ValueError(f"the run's latent space {space!r} is not supported here; valid: ['pixel', 'sd-vae']")
    _same("latent space", latent.describe(), description)
    return latent


def build_text_encoder(description: dict, *, device: str | None = None, model_path: str | None = None):
    from hddm_core.contrib.compatibility import encoder_base_name
    from hddm_core.data.text_encoders import ClipTextEncoder, MiniLMTextEncoder

    name = description.get("encoder", "")
    max_length = int(description["max_length"])
    if encoder_base_name(name) == "all-MiniLM-L6-v2":
        encoder = MiniLMTextEncoder(model_path, max_length=max_length, device=device)
    else:
        encoder = ClipTextEncoder.from_pretrained(model_path or name, max_length=max_length, device=device)
        encoder.source = name
    _same("text encoder", encoder.describe(), description)
    return encoder


def _same(what: str, built: dict, run: dict) -> None:
    diff = {k: (built.get(k), run.get(k)) for k in set(built) | set(run) if built.get(k) != run.get(k)}
    if diff:
        detail = "; ".join(f"{k}: built {a!r}, the run has {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"the {what} built here differs from the run's: {detail}")


# -- assign ------------------------------------------------------------------------------------------
def _thumbnails(samples: Iterable, labels: dict[str, int], per_cluster: int = 8, size: int = 48) -> dict[int, list]:
    thumbs: dict[int, list] = {}
    for s in samples:
        c = labels.get(s.key)
        if c is None or len(thumbs.setdefault(c, [])) >= per_cluster:
            continue
        im = s.image.convert("RGB").copy()
        im.thumbnail((size, size))
        thumbs[c].append(im)
    return thumbs


def assign_contribution(clustering_dir: str, source: dict, work_dir: str, *, device: str | None = None,
                        embedder_path: str | None = None, batch_size: int = 32, force: bool = False) -> dict:
    """Embed the contributor's images with the run's embedder and assign them with the run's
    centroids; writes work/embed, work/cluster (a cluster stage: assignments, the same centroids,
    sizes, a picture) and work/contribution.json. Returns {sizes, largest, n_samples, ...}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hddm_core.data import cluster_report
    from hddm_core.data.cluster import ASSIGNMENTS, PICTURE, SIZES, assign_to_clusters, load_centroids
    from hddm_core.data.embed import EmbedConfig, embed, read_embeddings

    card = read_card(clustering_dir)
    source = check_source(source)
    samples, source_hash, total = open_source(source)
    work = ArtifactStore(work_dir)
    embedder = build_embedder(card["embedder"], device=device, model_path=embedder_path)
    _same("embedder", {k: v for k, v in embedder.describe().items() if k != "file"},
          {k: v for k, v in card["embedder"].items() if k != "file"})
    embed_manifest = embed(work, EMBED_PREFIX, embedder, samples=samples(), input_hash=source_hash,
                           config=EmbedConfig(batch_size=batch_size), force=force, total=total)
    inputs = {"embeddings": embed_manifest.content_hash, "centroids": card["centroids_sha256"]}
    config = {"n_clusters": card["n_clusters"], "assigned_from": card["run"],
              "clustering_version": card["clustering_version"], "rule": card["assignment_rule"]}
    done = None if force else completed(work, CLUSTER_PREFIX, config, inputs)
    if done is None:
        if work.exists(f"{CLUSTER_PREFIX}/{MANIFEST_NAME}"):
            work.delete(f"{CLUSTER_PREFIX}/{MANIFEST_NAME}")
        keys, x = read_embeddings(work, EMBED_PREFIX)
        with ArtifactStore(clustering_dir).local_path(CENTROIDS_NAME) as path:
            centroids, parents, normalize = load_centroids(path)
        labels = assign_to_clusters(x, centroids, parents, normalize)  # [N] top-level cluster
        sizes = np.bincount(labels, minlength=card["n_clusters"]).astype(int).tolist()
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": keys, "cluster": labels.astype(np.int32)}), buf)
        work.write_bytes(f"{CLUSTER_PREFIX}/{ASSIGNMENTS}", buf.getvalue())
        work.write_bytes(f"{CLUSTER_PREFIX}/{CENTROIDS_NAME}", ArtifactStore(clustering_dir).read_bytes(CENTROIDS_NAME))
        work.write_json(f"{CLUSTER_PREFIX}/{SIZES}", {"sizes": sizes, "level_sizes": card["level_sizes"]})
        thumbs = _thumbnails(samples(), dict(zip(keys, labels.tolist())))
        work.write_bytes(f"{CLUSTER_PREFIX}/{PICTURE}", cluster_report.cluster_picture(
            thumbs, sizes, title=f"your images under the run's {card['n_clusters']} clusters"))
        outputs = [ASSIGNMENTS, CENTROIDS_NAME, SIZES, PICTURE]
        done = StageManifest(stage="cluster", config=config, config_hash=hash_config(config), inputs=inputs,
                             outputs=describe_outputs(work, CLUSTER_PREFIX, outputs),
                             counts={"samples": len(keys), "sizes": sizes})
        write_manifest(work, CLUSTER_PREFIX, done)
    sizes = list(done.counts["sizes"])
    summary = {"clustering_dir": os.path.abspath(clustering_dir) if "://" not in clustering_dir else clustering_dir,
               "source": source, "source_hash": source_hash, "clustering_version": card["clustering_version"],
               "n_samples": int(done.counts["samples"]), "sizes": sizes, "largest": int(np.argmax(sizes)),
               "picture": work.uri(f"{CLUSTER_PREFIX}/{PICTURE}")}
    work.write_json(CONTRIBUTION_NAME, summary)
    return summary


def read_contribution(work_dir: str) -> dict:
    work = ArtifactStore(work_dir)
    if not work.exists(CONTRIBUTION_NAME):
        raise FileNotFoundError(f"no {CONTRIBUTION_NAME} in {work_dir}: run `hddmp contrib assign` first")
    return work.read_json(CONTRIBUTION_NAME)


# -- prepare -----------------------------------------------------------------------------------------
def prepare_contribution(work_dir: str, *, device: str | None = None, vae_path: str | None = None,
                         text_encoder_path: str | None = None, batch_size: int = 32, force: bool = False) -> dict:
    """Encode the assigned images into work/prepare with the run's latent space and text encoder
    (the same stage the pipeline runs; the trainer's inputs). Returns the per-cluster counts."""
    from hddm_core.data.cluster_data import training_inputs_info
    from hddm_core.data.prepare import PrepareConfig, prepare_training_inputs

    info = read_contribution(work_dir)
    card = read_card(info["clustering_dir"])
    samples, source_hash, total = open_source(info["source"])
    if source_hash != info["source_hash"]:
        raise ValueError(f"the images under {info['source']} changed since `hddmp contrib assign`; run it again")
    work = ArtifactStore(work_dir)
    latent = build_latent_space(card["latent"], device=device, model_path=vae_path)
    text = build_text_encoder(card["text"], device=device, model_path=text_encoder_path)
    prepare_training_inputs(work, PREPARE_PREFIX, CLUSTER_PREFIX, latent, text, samples=samples(),
                            input_hash=source_hash, config=PrepareConfig(batch_size=batch_size), force=force,
                            total=total)
    got = training_inputs_info(work, PREPARE_PREFIX)
    return {"prepare": work.uri(PREPARE_PREFIX), "clusters": got["clusters"], "latent": got["latent"],
            "text": got["text"], "largest": info["largest"]}


# -- submit ------------------------------------------------------------------------------------------
def expectations(clustering_dir: str) -> RunExpectations:
    return RunExpectations.from_card(read_card(clustering_dir))


def check_contribution(expert_location: str, clustering_dir: str | None = None, *,
                       cluster_id: int | None = None):
    """(checks, manifest): the pipeline's checks, plus compatibility when a fetched clustering is given."""
    expected = expectations(clustering_dir) if clustering_dir else None
    return expert_checks(expert_location, expected, cluster_id=cluster_id)


def refusal_message(checks) -> str:
    failed = [c for c in checks if not c.ok]
    compat = [c for c in failed if c.name.startswith("compatible:")]
    first = (compat or failed)[0]
    more = f" (and {len(failed) - 1} more failed check{'s' if len(failed) > 2 else ''}: " \
           f"{', '.join(c.name for c in failed if c is not first)})" if len(failed) > 1 else ""
    return f"refused: {first.detail}{more}"


def submit_expert(expert_location: str, clustering_dir: str, *, name: str, cluster_id: int | None = None,
                  run_url: str | None = None, storage_options: dict | None = None,
                  store_fn: Callable[[str, str, str], str] | None = None) -> dict:
    """Check the expert (pipeline checks + compatibility with the run), then store it under the run's
    experts prefix as <experts>/<name>. Raises ContributionRefused naming the first failed field.

    run_url defaults to the run the clustering was fetched from; storage_options (or the
    environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) carry the contributor's own credentials.
    Storing is the register-expert stage's code (hddm_core.contrib.registration.register_expert), unless
    store_fn(expert_location, run_url, name) -> uri is given. A name already holding different
    weights is refused (nobody's expert is silently replaced); resubmitting the same weights is a no-op."""
    from hddm_core.pipeline.params import check_key_name

    check_key_name(name, "expert name")
    card = read_card(clustering_dir)
    checks, manifest = check_contribution(expert_location, clustering_dir, cluster_id=cluster_id)
    if not all(c.ok for c in checks):
        raise ContributionRefused(refusal_message(checks), checks)
    run_url = run_url or card["run"]
    key = posixpath.join(card["layout"]["experts"], name)
    run = ArtifactStore(run_url, storage_options)
    dest = posixpath.join(key, "expert.json")
    if run.exists(dest) and run.read_json(dest).get("weights_sha256") != manifest.weights_sha256:
        raise ContributionRefused(f"refused: {run.uri(key)} already holds a different expert; choose another name")
    if store_fn is not None:
        uri = store_fn(expert_location, run_url, name)
    else:  # the register-expert stage's own code path: validate, smoke forward, weights first, manifest last
        from hddm_core.contrib.registration import register_expert

        uri = register_expert(run, expert_location, card["layout"]["experts"], name)["uri"]
    return {"uri": uri, "name": name, "key": key, "cluster_id": manifest.cluster_id, "objective": manifest.objective,
            "weights_sha256": manifest.weights_sha256, "clustering_version": manifest.clustering_version,
            "checks": [str(c) for c in checks]}


# -- bookkeeping in the work folder --------------------------------------------------------------
def is_contribution(work_dir: str | None) -> bool:
    if not work_dir or ("://" not in work_dir and not os.path.isdir(work_dir)):
        return False  # asking must not create the folder (a refused command writes nothing)
    return ArtifactStore(work_dir).exists(CONTRIBUTION_NAME)


def record_trained_expert(work_dir: str, expert_uri: str, cluster_id: int, objective: str) -> None:
    """Remember the expert trained in this work folder (submit and validate default to it)."""
    work = ArtifactStore(work_dir)
    info = read_contribution(work_dir)
    if "://" not in expert_uri:  # a local path relative to this process's folder: keep it usable from anywhere
        expert_uri = os.path.abspath(expert_uri)
    info["expert"] = {"uri": expert_uri, "cluster_id": int(cluster_id), "objective": objective}
    work.write_json(CONTRIBUTION_NAME, info)


def trained_expert(work_dir: str) -> tuple[str, str]:
    """(expert URI, clustering folder) recorded in a work folder by `hddmp expert train`."""
    info = read_contribution(work_dir)
    if "expert" not in info:
        raise FileNotFoundError(f"no trained expert recorded in {work_dir}: run `hddmp expert train --artifact-root "
                                f"{work_dir} ...` first, or pass the expert folder")
    return info["expert"]["uri"], info["clustering_dir"]
