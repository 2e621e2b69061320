"""Preparing the contributor's assigned images as training inputs with the run's latent space and text encoder."""
from __future__ import annotations

from hddm_core.contrib.published_run import read_card
from hddm_core.contrib.sources import open_source
from hddm_core.contrib.work_folder import CLUSTER_PREFIX, PREPARE_PREFIX, read_contribution
from hddm_core.storage import ArtifactStore


def prepare_contribution(work_dir: str, *, device: str | None = None, vae_path: str | None = None,
                         text_encoder_path: str | None = None, batch_size: int = 32, force: bool = False) -> dict:
    """Encode the assigned images into work/prepare with the run's latent space and text encoder
    (the same stage the pipeline runs; the trainer's inputs). Returns the per-cluster counts."""
    from hddm_core.data.cluster_data import training_inputs_info
    from hddm_core.data.factories import build_latent_space, build_text_encoder
    from hddm_core.data.prepare import PrepareConfig, prepare_training_inputs

    info = read_contribution(work_dir)
    card = read_card(info["clustering_dir"])
    samples, source_hash, total = open_source(info["source"])
    if source_hash != info["source_hash"]:
        raise ValueError(f"the images under {info['source']} changed since `hddmp contrib assign`; run it again")
    work = ArtifactStore(work_dir)
    latent = build_latent_space(card["latent"], device=device, model_path=vae_path, check_recorded=True)
    text = build_text_encoder(card["text"], device=device, model_path=text_encoder_path, check_recorded=True)
    prepare_training_inputs(work, PREPARE_PREFIX, CLUSTER_PREFIX, latent, text, samples=samples(),
                            input_hash=source_hash, config=PrepareConfig(batch_size=batch_size), force=force,
                            total=total)
    got = training_inputs_info(work, PREPARE_PREFIX)
    return {"prepare": work.uri(PREPARE_PREFIX), "clusters": got["clusters"], "latent": got["latent"],
            "text": got["text"], "largest": info["largest"]}
