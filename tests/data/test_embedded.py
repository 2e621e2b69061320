"""The embedded OpenMoji dataset: real renders, Unicode captions and groups, deterministic, served by
the loopback server and downloaded through the real stage."""
from __future__ import annotations

import io
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hddm_core.data.download import DownloadConfig, run_download
from hddm_core.data.embedded import (EmbeddedConfig, EmojiRenderer, build_embedded_dataset, parse_emoji_test,
                                     read_index, select_entries, write_laion_parquet)
from hddm_core.data.loopback_server import LoopbackImageServer
from hddm_core.data.shards import iter_download_samples
from hddm_core.storage import ArtifactStore


def test_emoji_test_parsing_has_groups_and_fe0f_normalisation():
    entries = parse_emoji_test()
    by_name = {e.name: e for e in entries}
    dog = by_name["dog face"]
    assert (dog.group, dog.subgroup, dog.codepoints) == ("Animals & Nature", "animal-mammal", "1F436")
    rainbow = by_name["rainbow flag"]
    assert "FE0F" in rainbow.codepoints and "FE0F" not in rainbow.normalized
    assert len(entries) == 3655 and len({e.group for e in entries}) == 9  # "Component" has no fully-qualified rows


def test_limit_spreads_round_robin_over_groups_and_bad_groups_named():
    entries = parse_emoji_test()
    chosen = select_entries(entries, None, 27)
    assert len(chosen) == 27 and len({e.group for e in chosen}) == 9
    with pytest.raises(ValueError, match="Animals"):
        select_entries(entries, ["Animals and Nature"], None)
    with pytest.raises(ValueError, match="size"):
        EmbeddedConfig(size=2).validate()


def test_renders_are_real_coloured_glyphs_and_zwj_ligates():
    r = EmojiRenderer("openmoji", 64)
    by_name = {e.name: e for e in parse_emoji_test()}
    for name in ("dog face", "family: man, woman, girl", "rainbow flag", "flag: France"):
        im, reason = r.render(by_name[name])
        assert reason is None, (name, reason)
        arr = np.asarray(im).astype(int)
        assert im.size == (64, 64) and (arr != 255).any(axis=2).mean() > 0.2  # a glyph, not blank
        assert np.ptp(arr, axis=2).max() > 60  # in colour


@pytest.mark.slow  # over 10 s
def test_build_is_deterministic_and_downloads_through_img2dataset(tmp_path):
    cfg = EmbeddedConfig(size=48, limit=30, styles=("openmoji", "noto"))
    a = build_embedded_dataset(ArtifactStore(str(tmp_path / "a")), "emb", cfg)
    store = ArtifactStore(str(tmp_path / "b"))
    b = build_embedded_dataset(store, "emb", cfg)
    assert a.outputs == b.outputs and b.counts["images"] == 60  # same bytes, both styles
    assert build_embedded_dataset(store, "emb", cfg).created_at == b.created_at  # rerun: no-op
    index = read_index(store, "emb").to_pylist()
    assert {r["style"] for r in index} == {"openmoji", "noto"}
    with LoopbackImageServer(store, "emb/images") as server:
        key = write_laion_parquet(store, "emb", server.base_url)
        table = pq.read_table(io.BytesIO(store.read_bytes(key)))
        assert {"url", "caption", "width", "height", "group", "subgroup", "style", "emoji"} <= set(table.column_names)
        first = table.to_pylist()[0]
        with urllib.request.urlopen(first["url"], timeout=5) as resp:
            assert Image.open(io.BytesIO(resp.read())).size == (48, 48)
        manifest = run_download(store, key, "dl", DownloadConfig(image_size=48, allow_hosts=(server.host_port,),
                                                                 encode_format="png"))
    assert manifest.counts["success"] == 60
    samples = list(iter_download_samples(store, "dl"))
    captions = {r["caption"] for r in index}
    assert {s.caption for s in samples} == captions
    assert all(s.meta["group"] and s.meta["subgroup"] for s in samples)
