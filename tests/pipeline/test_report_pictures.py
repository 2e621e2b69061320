"""Summary cards (hddm_core.pipeline.report_pictures, stage_cards): pictures from the artifact store come
back as decodable, bounded data URIs; what does not fit or cannot be read is named in a sentence."""
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from hddm_core.pipeline import report_pictures as rp
from hddm_core.pipeline.reuse import StageRef
from hddm_core.pipeline.stage_cards import cluster_card, evaluation_card, expert_card, router_card
from hddm_core.storage import ArtifactStore

DATA_URI = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def png(width: int, height: int, noise: bool = False) -> bytes:
    """Left half red, right half blue (or uniform noise: incompressible)."""
    if noise:
        a = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        a = np.zeros((height, width, 3), np.uint8)
        a[:, : width // 2, 0] = 255
        a[:, width // 2:, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def embedded(text: str) -> list[tuple[str, Image.Image]]:
    return [(alt, Image.open(io.BytesIO(base64.b64decode(b64)))) for alt, b64 in DATA_URI.findall(text)]


def test_a_stored_png_comes_back_as_a_decodable_thumbnail(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("run/plot.png", png(1000, 600))
    card = rp.Card("plot")
    assert card.picture(store, "run/plot.png", "a plot")
    text = card.text()
    [(alt, im)] = embedded(text)
    assert alt == "a plot" and im.format == "PNG"
    assert im.size == (640, 384)  # longest side THUMB_SIDE, aspect ratio kept
    rgb = im.convert("RGB")
    for xy, colour in (((10, 10), (255, 0, 0)), ((630, 370), (0, 0, 255))):  # a 256-colour palette: within 2
        assert max(abs(a - b) for a, b in zip(rgb.getpixel(xy), colour)) <= 2
    assert len(text.encode()) <= rp.MAX_CARD_BYTES
    assert f"`{tmp_path}/run/plot.png`" in text  # the local path, for a terminal


def test_a_picture_over_the_budget_is_replaced_by_a_sentence(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("grid.png", png(800, 800, noise=True))
    card = rp.Card("grid", budget=10_000)
    assert not card.picture(store, "grid.png", "sample grid")
    text = card.text()
    assert "data:image" not in text and card.left_out == ["grid.png"]
    assert re.search(r"sample grid left out: its smallest thumbnail \(\d+ KB\) would take this card past its 10 KB "
                     r"limit; the picture is at `.*grid.png`", text)
    assert len(text.encode()) <= 10_000


def test_pictures_fill_the_budget_in_order_then_are_left_out(tmp_path):
    store = ArtifactStore(str(tmp_path))
    for i in range(4):
        store.write_bytes(f"p{i}.png", png(660, 660, noise=True))
    card = rp.Card("many").pictures(store, [(f"p{i}.png", f"picture {i}") for i in range(4)])
    shown = [alt for alt, _ in embedded(card.text())]
    assert shown and card.left_out  # noise thumbnails do not all fit in 200 KB
    assert shown == [f"picture {i}" for i in range(len(shown))]  # the first ones, in order
    assert len(card.text().encode()) <= rp.MAX_CARD_BYTES


def test_missing_or_unreadable_pictures_are_named(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("bad.png", b"not a picture")
    card = rp.Card("x")
    assert not card.picture(store, "gone.png", "loss curve")
    assert not card.picture(store, "bad.png", "grid")
    text = card.text()
    assert f"loss curve: no picture at `{tmp_path}/gone.png`" in text
    assert f"grid: `{tmp_path}/bad.png` could not be shown (UnidentifiedImageError" in text


def test_thumbnail_limits_and_arguments():
    small = png(20, 10)
    assert Image.open(io.BytesIO(rp.thumbnail_png(small))).size == (20, 10)  # never enlarged
    assert Image.open(io.BytesIO(rp.thumbnail_png(png(300, 100), max_side=60, colors=16))).mode == "P"
    with pytest.raises(ValueError, match="a 300x100 picture is over the 1000-pixel limit"):
        rp.thumbnail_png(png(300, 100), max_pixels=1000)
    with pytest.raises(ValueError, match="max_side must be >= 8 pixels, got 4"):
        rp.thumbnail_png(small, max_side=4)
    with pytest.raises(ValueError, match="colors must be 2..256 .* got 300"):
        rp.thumbnail_png(small, colors=300)
    with pytest.raises(ValueError, match="card budget must be >= 8000 bytes, got 100"):
        rp.Card("x", budget=100)


def test_where_an_object_is_said_by_store_kind():
    assert rp.describe_location("https://h/x/report.md") == "[report.md](https://h/x/report.md)"
    assert rp.describe_location("s3://bucket/run/report.md") == "S3 object `s3://bucket/run/report.md`"
    assert rp.describe_location("/data/run/report.md", "/data/run/report.md") == "`/data/run/report.md`"


def test_markdown_table_cells():
    lines = rp.markdown_table([{"routing": "top-1", "FD": 1.234567, "LPIPS": None}, {"routing": "a|b", "x": 3}])
    assert lines == ["| routing | FD | LPIPS | x |", "|---|---|---|---|", "| top-1 | 1.235 | n/a | n/a |",
                     "| a\\|b | n/a | n/a | 3 |"]
    assert rp.markdown_table([]) == ["(no rows)"]


def _ref(stage, prefix, **kw):
    return StageRef(stage=stage, uri=f"/x/{prefix}", prefix=prefix, content_hash="h", **kw)


def test_evaluation_card_metrics_per_mode_then_grids_then_plots(tmp_path):
    store = ArtifactStore(str(tmp_path))
    for rel in ("grids/top-1.png", "grids/threshold.png", "grids/expert_alice.png", "plots/quality.png"):
        store.write_bytes(f"ev/{rel}", png(120, 80))
    store.write_bytes("ev/report.md", b"# report\n")
    metrics = {"top-1": {"FD": 2.5, "CLIP": None}, "threshold": {"FD": 1.25, "CLIP": 0.3}}
    ref = _ref("evaluate", "ev", counts={"experts": 2, "samples_per_mode": 4}, extra={"metrics": metrics})
    text = evaluation_card(store, ref)
    assert "| routing | FD | CLIP |" in text and "| top-1 | 2.5 | n/a |" in text
    assert "| threshold | 1.25 | 0.3 |" in text
    assert [alt for alt, _ in embedded(text)] == ["samples: threshold", "samples: top-1", "quality",
                                                  "samples of alice alone"]
    assert f"`{tmp_path}/ev/report.md`" in text and len(text.encode()) <= rp.MAX_CARD_BYTES


def test_training_and_cluster_cards(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("run/expert/loss_curve.png", png(200, 100))
    ref = _ref("train-expert", "run/expert", counts={"steps": 40, "samples": 12, "final_loss": 0.123456},
               extra={"cluster_id": 3, "objective": "ddpm-eps", "init": "scratch"})
    text = expert_card(store, ref)
    assert "## train-expert: cluster 3, ddpm-eps" in text and "| 3 | ddpm-eps | 40 | 12 | 0.1235 |" in text
    assert [alt for alt, _ in embedded(text)] == ["training loss"]

    store.write_bytes("r/router/evaluation.png", png(200, 100))
    text = router_card(store, _ref("train-router", "r/router", counts={"steps": 8, "samples": 5,
                                                                        "accuracy_by_t": {"0.0-0.5": 0.75}}))
    assert "| 0.0-0.5 | 0.75 |" in text and "router training loss: no picture at" in text
    assert [alt for alt, _ in embedded(text)] == ["router accuracy and calibration over t"]

    store.write_bytes("cluster/report.md", b"# Cluster report: cluster\n\n| cluster | size |\n|---:|---:|\n| 0 | 7 |\n")
    store.write_bytes("cluster/clusters.png", png(300, 300))
    text = cluster_card(store, _ref("cluster", "cluster", counts={"sizes": [7]}))
    assert "| 0 | 7 |" in text and [alt for alt, _ in embedded(text)] == ["cluster grid: sample images per cluster"]
