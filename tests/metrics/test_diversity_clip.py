"""LPIPS diversity (unavailable without AlexNet weights; real code path with a weights file), named
substitutes, CLIP score (unavailable offline; scoring path with a small open_clip model, also saved
and loaded back as a local-dir model), and the evaluation's SampleMetrics."""
import json

import numpy as np
import pytest
import torch

from hddm_core.metrics.fid import to_pil_images
from hddm_core.metrics.clip_score import ClipScorer, clip_score, load_clip_scorer
from hddm_core.metrics.sample_metrics import SampleMetrics
from hddm_core.metrics.lpips_diversity import (LPIPS_NAME, feature_diversity, lpips_diversity, pixel_diversity,
                                               vector_diversity)


def test_lpips_is_unavailable_without_backbone_weights(tmp_path):
    out = lpips_diversity({"p": torch.zeros(2, 3, 64, 64)}, backbone_path=str(tmp_path / "missing.pth"))
    assert out.status == "unavailable" and out.value is None and "AlexNet" in out.reason
    assert out.name == LPIPS_NAME


def test_lpips_code_path_with_a_weights_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)  # a tensors-only file in the real layout
    imgs = torch.rand(3, 3, 64, 64) * 2 - 1
    out = lpips_diversity({"a": imgs, "b": imgs[[0, 0, 0]]}, backbone_path=str(path))
    assert out.ok and out.details["per_prompt"]["b"] == pytest.approx(0.0, abs=1e-6)
    assert out.details["per_prompt"]["a"] > 0


def test_pixel_and_feature_diversity_closed_forms():
    x = torch.zeros(3, 3, 4, 4)
    x[1] += 1.0
    x[2] -= 1.0
    out = pixel_diversity({"p": x, "q": x[[0, 0]]})
    assert out.name == "pixel-RMS diversity"
    assert out.details["per_prompt"]["p"] == pytest.approx((1 + 1 + 2) / 3)
    assert out.value == pytest.approx(((4 / 3) + 0) / 2)
    f = feature_diversity({"p": np.array([[1.0, 0], [0, 1.0]])})
    assert f.value == pytest.approx(1.0) and f.name == "inception-cosine diversity"
    v = vector_diversity({"g": np.array([[0.0, 0], [3.0, 4.0]])})
    assert v.value == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least 2"):
        pixel_diversity({"p": x[:1]})


def test_clip_unavailable_for_missing_checkpoint_and_offline_tag(tmp_path):
    scorer, reason = load_clip_scorer("ViT-B-32", str(tmp_path / "none.safetensors"))
    assert scorer is None and "not found" in reason
    out = clip_score(torch.zeros(1, 3, 32, 32), ["a cat"], model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert out.status == "unavailable" and out.value is None and "ViT-B-32" in out.name


def test_clip_score_scale_and_clipping_with_a_small_model():
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}).eval()
    import torchvision.transforms as T

    scorer = ClipScorer(model, T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()]),
                        open_clip.get_tokenizer("ViT-B-32"), "test-model (random init, test only)")
    imgs = torch.rand(4, 3, 32, 32) * 2 - 1
    s = scorer.scores(imgs, ["a red circle", "a cat", "emoji", "x"])
    with torch.no_grad():
        fi = model.encode_image(torch.stack([T.ToTensor()(im) for im in to_pil_images(imgs)]))
        ft = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(["a red circle", "a cat", "emoji", "x"]))
    cos = torch.nn.functional.cosine_similarity(fi, ft).double().numpy()
    assert np.allclose(s, 100 * np.clip(cos, 0, None), atol=1e-4)
    assert (s >= 0).all() and (s <= 100).all()
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.scores(imgs, ["a"])


TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


def _tiny_clip_dir(folder, weights: bool = True):
    """A random-init open_clip model from TINY_CLIP saved in open_clip's local-dir layout (test only)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP).eval()
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    if weights:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return model


def test_clip_score_from_a_local_dir_model_equals_the_saved_model(tmp_path):
    import open_clip

    model = _tiny_clip_dir(tmp_path / "tiny")
    scorer, reason = load_clip_scorer(f"local-dir:{tmp_path / 'tiny'}")
    assert reason == "" and scorer.model_id == f"local-dir:{tmp_path / 'tiny'}"
    imgs = torch.rand(3, 3, 40, 40) * 2 - 1
    prompts = ["a red circle", "a cat", "emoji"]
    s = scorer.scores(imgs, prompts)
    with torch.no_grad():
        fi = model.encode_image(torch.stack([scorer.preprocess(im) for im in to_pil_images(imgs)]))
        ft = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(prompts))
    cos = torch.nn.functional.cosine_similarity(fi, ft).double().numpy()
    assert np.allclose(s, 100 * np.clip(cos, 0, None), atol=1e-4)
    out = clip_score(imgs, prompts, scorer=scorer)
    assert out.ok and out.value == pytest.approx(float(s.mean())) and out.details["n"] == 3


def test_clip_local_dir_without_weights_is_unavailable_not_random(tmp_path):
    _tiny_clip_dir(tmp_path / "noweights", weights=False)
    out = clip_score(torch.zeros(1, 3, 32, 32), ["a cat"], model_name=f"local-dir:{tmp_path / 'noweights'}")
    assert out.status == "unavailable" and out.value is None and "weights" in out.reason
    scorer, reason = load_clip_scorer(f"local-dir:{tmp_path / 'nothing'}")
    assert scorer is None and "open_clip_config.json" in reason


def test_sample_metrics_reports_clip_from_the_environment_and_lpips_unavailable(tmp_path, monkeypatch):
    _tiny_clip_dir(tmp_path / "tiny")
    monkeypatch.setenv("HDDM_CLIP_MODEL", f"local-dir:{tmp_path / 'tiny'}")
    sm = SampleMetrics(lpips_weights=str(tmp_path / "missing.safetensors"))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    out = sm({"0:a": x[:2], "1:b": x[2:]}, x, ["a", "a", "b", "b"])
    clip_name = f"CLIPScore (local-dir:{tmp_path / 'tiny'}, 100 x cos clipped at 0)"
    assert set(out) == {LPIPS_NAME, "pixel-RMS diversity", clip_name}
    assert out[clip_name].ok and out[clip_name].value == pytest.approx(float(sm.clip.scores(x, ["a", "a", "b", "b"]).mean()))
    assert out[LPIPS_NAME].status == "unavailable" and "missing.safetensors" in out[LPIPS_NAME].reason
    assert out["pixel-RMS diversity"].ok and sm.diversity == "pixel-RMS diversity"
