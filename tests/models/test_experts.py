"""Expert and router checkpoints: round trips (local and fsspec URL), write order, and every
validation check failing for the reason it names; pickles are refused without being unpickled."""
import hashlib
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hddm_cli.main import main as cli_main
from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.checkpoints import (CheckpointError, PickleRefused, inspect_expert, load_expert, load_router,
                                   save_expert, save_router, validate_expert, velocity_expert_from_loaded)
from hddm_core.models import build_expert_model, build_router, expert_config, router_config
from hddm_core.storage import ArtifactStore

from .conftest import randomize

FIELDS = dict(objective="ddpm-eps", latent_space="pixel", text_encoder="sentence-transformers/all-MiniLM-L6-v2",
              data_hash="d" * 64, cluster_id=3, clustering_version="kmeans-v1")


class _Payload:
    def __reduce__(self):  # unpickling this would end the test run
        return (exec, ("raise SystemExit('a pickle was unpickled')",))


@pytest.fixture
def saved(tmp_path, tiny16):
    uri = save_expert(str(tmp_path), "experts/c3", tiny16, FIELDS)
    return uri, tiny16


def _manifest_path(uri):
    return os.path.join(uri, "expert.json")


def _edit_manifest(uri, **changes):
    path = _manifest_path(uri)
    raw = json.load(open(path))
    raw.update(changes)
    json.dump(raw, open(path, "w"))
    return raw


def _replace_weights(uri, data: bytes):
    """Swap the weights for other bytes and make the manifest's size and hash agree with them."""
    raw = json.load(open(_manifest_path(uri)))
    with open(os.path.join(uri, raw["weights_file"]), "wb") as f:
        f.write(data)
    _edit_manifest(uri, weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))


def _failed(checks):
    return {c.name for c in checks if not c.ok}


def test_round_trip_is_exact_and_self_describing(saved):
    uri, model = saved
    loaded = load_expert(uri)
    m = loaded.manifest
    assert m.declaration == ExpertDeclaration("eps", "ddpm-linear", "discrete-999")
    assert (m.objective, m.preset, m.cluster_id, m.clustering_version, m.text_dim) == ("ddpm-eps", "tiny-16", 3, "kmeans-v1", 384)
    assert (m.latent_space, m.latent_scale, m.image_resolution, m.dtype) == ("pixel", 1.0, 16, "float32")
    assert m.config == model.config.to_dict() and m.num_parameters == sum(p.numel() for p in model.parameters())
    assert m.weights_file == f"weights-{m.weights_sha256[:16]}.safetensors"
    assert all(c.ok for c in loaded.checks) and {c.name for c in loaded.checks} >= {
        "schema", "size", "not-pickle", "shapes", "dtypes", "sha256", "finite"}
    x, t, tokens = torch.randn(2, 3, 16, 16), torch.tensor([5.0, 800.0]), torch.randn(2, 4, 384)
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, tokens), model(x, t, tokens))
    for location in (os.path.join(uri, "expert.json"), os.path.join(uri, m.weights_file)):
        assert load_expert(location).manifest == m
    v = velocity_expert_from_loaded(loaded)
    with torch.no_grad():
        assert v(x, torch.tensor([0.1, 0.9]), tokens).shape == x.shape


def test_weights_are_written_before_the_manifest(tmp_path, tiny16):
    order = []

    class Recording(ArtifactStore):
        def put_file(self, local_path, key):
            order.append(key)
            return super().put_file(local_path, key)

        def write_json(self, key, obj):
            order.append(key)
            return super().write_json(key, obj)

    save_expert(Recording(str(tmp_path)), "e", tiny16, FIELDS)
    assert order[-1] == "e/expert.json" and order[0].startswith("e/weights-")


def test_resaving_swaps_the_pair_and_removes_old_weights(saved):
    uri, model = saved
    old = json.load(open(_manifest_path(uri)))["weights_file"]
    randomize(model, seed=9)
    save_expert(os.path.dirname(os.path.dirname(uri)), "experts/c3", model, FIELDS)
    new = json.load(open(_manifest_path(uri)))["weights_file"]
    assert new != old and sorted(os.listdir(uri)) == sorted(["expert.json", new])
    assert torch.equal(load_expert(uri).model.null_caption, model.null_caption)


def test_fsspec_url_round_trip(tiny16):
    uri = save_expert("memory://hddm-test-bucket/run1", "experts/c0", tiny16, FIELDS)
    assert uri == "memory://hddm-test-bucket/run1/experts/c0"
    loaded = load_expert(uri)
    assert torch.equal(loaded.model.null_caption, tiny16.null_caption) and all(c.ok for c in loaded.checks)


def test_bf16_weights_keep_their_dtype(tmp_path, tiny16):
    uri = save_expert(str(tmp_path), "bf", tiny16.to(torch.bfloat16), FIELDS)
    loaded = load_expert(uri)
    assert loaded.manifest.dtype == "bfloat16" and loaded.model.null_caption.dtype == torch.bfloat16
    _edit_manifest(uri, dtype="float16")
    assert _failed(validate_expert(uri)) == {"dtypes"}


@pytest.mark.parametrize("name", ["expert.pt", "model.pth", "x.ckpt", "pytorch_model.bin", "a.pkl"])
def test_pickle_names_are_refused_before_reading(tmp_path, name):
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(PickleRefused, match="Nothing was read"):
        load_expert(str(path))
    with pytest.raises(PickleRefused):
        validate_expert(str(path))
    assert "[FAIL] not-pickle" in inspect_expert(str(path))


@pytest.mark.parametrize("kind", ["raw-pickle", "torch-save"])
def test_pickle_bytes_under_a_safetensors_name_are_refused(saved, tmp_path, kind):
    uri, _ = saved
    if kind == "raw-pickle":
        data = pickle.dumps({"w": _Payload()}, protocol=4)
    else:
        torch.save({"w": torch.zeros(2)}, tmp_path / "z.pt")
        data = open(tmp_path / "z.pt", "rb").read()
    _replace_weights(uri, data)
    with pytest.raises(PickleRefused, match="nothing was unpickled"):
        load_expert(uri)
    assert "refusing" in inspect_expert(uri)


def test_tampered_bytes_fail_the_hash(saved):
    uri, _ = saved
    raw = json.load(open(_manifest_path(uri)))
    path = os.path.join(uri, raw["weights_file"])
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0xFF  # inside the last tensor's data
    open(path, "wb").write(bytes(data))
    assert _failed(validate_expert(uri)) == {"sha256"}
    with pytest.raises(CheckpointError, match="sha256") as err:
        load_expert(uri)
    assert any(c.name == "sha256" and not c.ok for c in err.value.checks)


def test_weights_that_do_not_fit_the_config_fail_shapes(saved, tmp_path):
    uri, model = saved
    raw = json.load(open(_manifest_path(uri)))
    _edit_manifest(uri, config={**raw["config"], "depth": 3})  # the count by formula no longer matches
    checks = validate_expert(uri)
    assert _failed(checks) == {"schema"} and [c.code for c in checks] == ["num-parameters"]
    bigger = build_expert_model(expert_config("tiny-16", depth=3))
    _edit_manifest(uri, num_parameters=sum(p.numel() for p in bigger.parameters()))
    checks = validate_expert(uri)  # the header's data section is one block short of what the config needs
    assert _failed(checks) == {"data-size"} and {c.code for c in checks if not c.ok} == {"size-vs-config"}
    _edit_manifest(uri, config=raw["config"], num_parameters=raw["num_parameters"])
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["blocks.0.mlp.fc1.weight"] = state["blocks.0.mlp.fc1.weight"].T.contiguous()  # same bytes, wrong shape
    save_file(state, str(tmp_path / "t.safetensors"))
    _replace_weights(uri, open(tmp_path / "t.safetensors", "rb").read())
    checks = validate_expert(uri)
    assert _failed(checks) == {"shapes"} and "blocks.0.mlp.fc1.weight" in str(checks)


def test_non_finite_weights_are_refused(saved, tmp_path):
    uri, model = saved
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    _replace_weights(uri, open(tmp_path / "nan.safetensors", "rb").read())
    checks = validate_expert(uri)
    assert _failed(checks) == {"finite"} and "blocks.0.mlp.fc1.weight" in str(checks)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        save_expert(str(tmp_path / "s"), "x", model, FIELDS)


def test_size_limits(saved):
    uri, _ = saved
    assert _failed(validate_expert(uri, max_bytes=1000)) == {"size"}
    with pytest.raises(CheckpointError, match="size"):
        load_expert(uri, max_bytes=1000)
    raw = json.load(open(_manifest_path(uri)))
    _edit_manifest(uri, weights_bytes=raw["weights_bytes"] + 1)
    assert _failed(validate_expert(uri)) == {"size"}


@pytest.mark.parametrize("change, match", [
    ({"format_version": 2}, "format_version 2"),
    ({"objective": "score-matching"}, "unknown objective"),
    ({"time_input": "minutes"}, "unknown time input"),
    ({"schedule": 3}, "field 'schedule' must be str"),
    ({"latent_space": "jpeg"}, "latent_space 'jpeg'"),
    ({"weights_file": "../../etc/passwd.safetensors"}, "plain file name"),
    ({"surprise": 1}, "unknown field 'surprise'"),
    ({"weights_sha256": "xyz"}, "not a sha256"),
    ({"text_dim": 99}, "text_dim 99 disagrees"),
    ({"cluster_id": True}, "cluster_id"),
])
def test_schema_errors_are_named(saved, change, match):
    uri, _ = saved
    _edit_manifest(uri, **change)
    checks = validate_expert(uri)
    assert _failed(checks) == {"schema"} and match in str(checks)
    with pytest.raises(CheckpointError, match="schema"):
        load_expert(uri)


def test_the_json_schema_is_read_from_the_manifest_dataclasses(saved):
    """Field types and which fields may be left out come from ExpertManifest itself (written once)."""
    import dataclasses

    from hddm_core.checkpoints import ExpertManifest
    from hddm_core.checkpoints.manifest import field_spec

    spec = field_spec(ExpertManifest)
    assert list(spec) == [f.name for f in dataclasses.fields(ExpertManifest)]
    assert {k for k, (_, required) in spec.items() if not required} == {"clustering_version", "extra", "cluster_id"}
    assert spec["latent_scale"][0] == (int, float) and spec["cluster_id"][0] == (int, type(None))
    uri, _ = saved
    raw = _edit_manifest(uri, latent_scale=1)  # a JSON integer where a float is declared
    for k in ("clustering_version", "extra", "cluster_id"):
        del raw[k]
    json.dump(raw, open(_manifest_path(uri), "w"))
    m = load_expert(uri).manifest
    assert (m.latent_scale, m.clustering_version, m.extra, m.cluster_id) == (1, None, {}, None)
    _edit_manifest(uri, latent_scale="1.0")
    assert "field 'latent_scale' must be int/float" in str(validate_expert(uri))


def test_missing_field_and_not_json(saved):
    uri, _ = saved
    raw = json.load(open(_manifest_path(uri)))
    del raw["data_hash"]
    json.dump(raw, open(_manifest_path(uri), "w"))
    assert "missing field 'data_hash'" in str(validate_expert(uri))
    open(_manifest_path(uri), "w").write("{not json")
    assert "is not JSON" in str(validate_expert(uri))


@pytest.mark.parametrize("fields, match", [
    ({k: v for k, v in FIELDS.items() if k != "objective"}, "needs 'objective'"),
    ({**FIELDS, "weights_sha256": "0" * 64}, "derived from the model"),
    ({**FIELDS, "latent_space": "sd-vae"}, "missing field 'latent_scale'"),
    ({**FIELDS, "extra": [1]}, "field 'extra' must be dict"),
])
def test_bad_save_requests_write_nothing(tmp_path, tiny16, fields, match):
    with pytest.raises(ValueError, match=match):
        save_expert(str(tmp_path), "e", tiny16, fields)
    assert not os.path.exists(tmp_path / "e")


def test_router_round_trip(tmp_path):
    torch.manual_seed(0)
    router = randomize(build_router(router_config("tiny-16", 3)))
    uri = save_router(str(tmp_path), "router", router, dict(latent_space="pixel", data_hash="h", cluster_ids=[2, 5, 7]))
    loaded = load_router(uri)
    assert loaded.manifest.cluster_ids == [2, 5, 7] and loaded.manifest.time_input == "scaled-1000"
    report = inspect_expert(uri)
    assert "(router)" in report and report.endswith("verdict: OK")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t), router(x, t))
    with pytest.raises(ValueError, match="distinct integers"):
        save_router(str(tmp_path), "r2", router, dict(latent_space="pixel", data_hash="h", cluster_ids=[1, 1, 2]))
    with pytest.raises(FileNotFoundError, match="expert.json"):
        load_expert(uri)
    with pytest.raises(ValueError, match="RouterConfig"):
        save_router(str(tmp_path), "r3", build_expert_model(expert_config("tiny-16")), dict(latent_space="pixel", data_hash="h"))


def test_cli_inspect(saved, capsys):
    uri, _ = saved
    assert cli_main(["expert", "inspect", uri]) == 0
    out = capsys.readouterr().out
    assert '"ddpm-eps"' in out and "[ok] sha256" in out and out.strip().endswith("verdict: OK")
    _edit_manifest(uri, format_version=9)
    assert cli_main(["expert", "inspect", uri]) == 1
    assert "verdict: INVALID" in capsys.readouterr().out
    assert cli_main(["expert", "inspect", uri + "-missing"]) == 2


def test_compiled_wrapper_saves_like_the_module(tmp_path, tiny16):
    uri = save_expert(str(tmp_path), "c", torch.compile(tiny16, backend="eager"), FIELDS)
    loaded = load_expert(uri)
    assert set(loaded.model.state_dict()) == set(tiny16.state_dict())
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    assert all(not p.is_meta for p in loaded.model.state_dict().values())
