"""Malformed safetensors headers are rejections with a reason code, never tracebacks; pickles are
recognised by their structure, so a valid file whose header length begins like a pickle marker loads.

The fuzz mutates a valid tiny-16 expert's weights (header bytes, the length field, truncation, and
structured edits of the header JSON: empty / non-numeric / overlapping / gapped / mis-sized offsets,
missing or non-string dtypes, deep nesting) and runs the weights checks on each mutant. A crash is any
exception other than a rejection (PickleRefused counts as one: it names its reason); a parser gap is
a mutant every check accepted that the safetensors library then refuses to load.
"""
import io
import json
import pickle
import random
import struct
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

from hddm_core.checkpoints import PickleRefused, save_expert, validate_expert
from hddm_core.checkpoints.header import CODES, MAX_NESTING, HeaderRejected, parse_header
from hddm_core.checkpoints.manifest import KINDS
from hddm_core.checkpoints.pickle_guard import sniff
from hddm_core.checkpoints.weights_checks import Deadline, weights_checks
from hddm_core.data.safetensors_bytes import canonical_safetensors
from hddm_core.models import build_expert_model, expert_config
from hddm_core.storage import ArtifactStore

from .test_experts import FIELDS, _Payload, _failed, _replace_weights

N_FUZZ, N_FUZZ_FAST = 10_000, 2_000  # the full fuzz takes ~10 s on an idle core (~35 s on a loaded 2-core machine)


@pytest.fixture(scope="module")
def valid():
    torch.manual_seed(0)
    model = build_expert_model(expert_config("tiny-16"))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return canonical_safetensors(safetensors.torch.save(state, metadata={"format": "hddm-expert", "preset": "tiny-16"})), \
        model.config


def _split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body: bytes, pad: bool = True) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _structured(rng: random.Random, data: bytes) -> bytes:
    header, body = _split(data)
    name = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[name]
    begin, end = entry["data_offsets"]
    edit = rng.randrange(16)
    if edit == 0:
        entry["data_offsets"] = []
    elif edit == 1:
        entry["data_offsets"] = [str(begin), "x"]
    elif edit == 2:
        entry["data_offsets"] = [begin, end + rng.choice([-4, -1, 1, 4])]  # mis-sized
    elif edit == 3:
        entry["data_offsets"] = [max(0, begin - 4), end - 4]  # overlaps the previous tensor
    elif edit == 4:
        entry["data_offsets"] = [begin + 4, end + 4]  # gap (and a run past the data)
    elif edit == 5:
        del entry["dtype"]
    elif edit == 6:
        entry["dtype"] = rng.choice([5, None, ["F32"], "F33", ""])
    elif edit == 7:
        entry["shape"] = rng.choice([[-1], ["2"], [1.5], None, [True], [2**62, 2**62]])
    elif edit == 8:
        header[name] = rng.choice([[], "x", 3, None])
    elif edit == 9:
        deep = rng.choice([5, 50, 100_000])
        return _join(b'{"a":' + b"[" * deep + b"]" * deep + b"}", body)
    elif edit == 10:
        entry["data_offsets"] = [begin, 1 << 70]
    elif edit == 11:
        header["__metadata__"] = rng.choice([{"k": 1}, [], "x", {"k": {"n": "v"}}])
    elif edit == 12:
        entry["extra"] = 1
    elif edit == 13:
        return _join(json.dumps(header).encode().replace(b"}", b"", 1), body)
    elif edit == 14:
        entry["data_offsets"] = [begin, float(end)]
    else:
        return _join(json.dumps(header).encode(), body, pad=False)
    return _join(header, body)


def mutate(rng: random.Random, data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    kind = rng.randrange(6)
    if kind == 0:  # bytes of the header
        m = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            m[rng.randrange(8 + n)] = rng.randrange(256)
        return bytes(m)
    if kind == 1:  # the length field
        value = rng.choice([0, 1, n - 1, n + 1, n + rng.randint(-64, 64), rng.getrandbits(64), len(data), 1 << 24])
        return struct.pack("<Q", max(0, value) % (1 << 64)) + data[8:]
    if kind == 2:  # truncated
        return data[:rng.randrange(len(data))]
    if kind == 3:  # inserted or removed header bytes
        at = rng.randrange(8, 8 + n)
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 3))) + data[at:] \
            if rng.random() < 0.5 else data[:at] + data[at + 1:]
    return _structured(rng, data)


def run_fuzz(valid_bytes: bytes, config, count: int, seed: int = 0) -> dict:
    store, kind = ArtifactStore("/nonexistent-fuzz-root"), KINDS["expert"]
    rng = random.Random(seed)
    tally = {"crashes": 0, "gaps": 0, "accepted": 0, "codes": {}, "examples": []}
    for _ in range(count):
        m = mutate(rng, valid_bytes)
        manifest = SimpleNamespace(weights_file="w.safetensors", weights_bytes=len(m), dtype="float32",
                                   weights_sha256="0" * 64)
        try:
            checks = weights_checks(store, manifest, kind, config, 1 << 30, False, m, Deadline(60))
        except PickleRefused:
            tally["codes"]["pickle"] = tally["codes"].get("pickle", 0) + 1
            continue
        except Exception as exc:  # noqa: BLE001 - what the fuzz counts
            tally["crashes"] += 1
            tally["examples"].append(f"{type(exc).__name__}: {exc}"[:160])
            continue
        failed = [c for c in checks if not c.ok]
        for c in failed:
            assert c.code, c
            tally["codes"][c.code] = tally["codes"].get(c.code, 0) + 1
        if not failed:
            tally["accepted"] += 1
            try:
                safetensors.torch.load(m)
            except Exception as exc:  # noqa: BLE001
                tally["gaps"] += 1
                tally["examples"].append(f"accepted but unloadable: {exc}"[:160])
    return tally


@pytest.mark.parametrize("count", [pytest.param(N_FUZZ, marks=pytest.mark.slow), N_FUZZ_FAST])
def test_fuzzed_headers_never_crash_the_validator(valid, count):
    """On the code before this test, 10,000 mutants gave 855 crashes (IndexError, KeyError, TypeError,
    ValueError, RecursionError) and 1,036 accepted files the safetensors library refused to load."""
    data, config = valid
    tally = run_fuzz(data, config, count)
    assert tally["crashes"] == 0 and tally["gaps"] == 0, tally["examples"][:10]
    assert {"header-not-json", "header-length", "header-range-size", "header-overlap", "header-dtype",
            "header-nesting", "header-entry", "header-offsets"} <= set(tally["codes"]), tally["codes"]


@pytest.mark.parametrize("header, code", [
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": []}}, "header-offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}, "header-offsets"),
    ({"a": {"shape": [1], "data_offsets": [0, 4]}}, "header-entry"),
    ({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, "header-dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "header-range-size"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, "header-overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "header-gap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"k": 1}}, "header-metadata"),
    ([1, 2], "header-not-object"),
])
def test_each_malformation_has_its_reason_code(header, code):
    data = _join(header, b"\0" * 8)
    with pytest.raises(HeaderRejected) as err:
        parse_header(data, len(data))
    assert err.value.code == code and err.value.code in CODES


def test_deep_nesting_is_refused_before_json_recurses():
    deep = 1_000_000
    data = _join(b'{"a":' + b"[" * deep + b"]" * deep + b"}", b"")
    with pytest.raises(HeaderRejected) as err:
        parse_header(data, len(data))
    assert err.value.code == "header-nesting" and f"deeper than {MAX_NESTING}" in str(err.value)


def _with_header_length(data: bytes, target: int) -> bytes:
    """The same tensors re-serialised with metadata padded so the header is exactly `target` bytes."""
    header, body = _split(data)
    header["__metadata__"] = {**header.get("__metadata__", {}), "pad": ""}
    base = len(json.dumps(header, separators=(",", ":")).encode())
    header["__metadata__"]["pad"] = "x" * (target - base)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) == target
    return struct.pack("<Q", target) + text + body


@pytest.mark.parametrize("marker", [b"\x80\x02", b"\x80\x04"])
def test_a_valid_file_whose_length_looks_like_a_pickle_marker_loads(saved_expert, marker):
    uri, model = saved_expert
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    data = canonical_safetensors(safetensors.torch.save(state))
    target = struct.unpack("<Q", marker + b"\x01" + b"\0" * 5)[0]  # 0x01_02_80 = 66,176 (or 0x01_04_80)
    crafted = _with_header_length(data, target)
    assert crafted[:2] == marker
    _replace_weights(uri, crafted)
    assert _failed(validate_expert(uri)) == set()


@pytest.fixture
def saved_expert(tmp_path, tiny16):
    return save_expert(str(tmp_path), "e", tiny16, FIELDS), tiny16


@pytest.mark.parametrize("protocol", range(6))
def test_real_pickles_of_every_protocol_are_refused(saved_expert, protocol):
    uri, _ = saved_expert
    data = pickle.dumps({"w": _Payload(), "n": list(range(100))}, protocol=protocol)
    assert sniff(data) == f"a pickle stream (protocol {protocol if protocol >= 2 else 0})"
    _replace_weights(uri, data)
    with pytest.raises(PickleRefused, match="nothing was unpickled"):
        validate_expert(uri)


def test_a_torch_save_archive_is_refused_by_its_data_pkl(saved_expert, tmp_path):
    uri, _ = saved_expert
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    assert "data.pkl" in sniff(buf.getvalue())
    _replace_weights(uri, buf.getvalue())
    with pytest.raises(PickleRefused, match="torch.save"):
        validate_expert(uri)
