"""Environment errors end in one line on stderr, a non-zero exit and nothing written: a GPU asked for
where none is visible, an artifact root that is a file, S3 without credentials, an endpoint that does
not answer, and invalid options that used to be found only after work had started."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from hddm_cli.main import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "DEBUG"))]
    assert len(lines) == 1 and lines[0].startswith("hddmp: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_cuda_without_gpu(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    root = tmp_path / "art"
    line = one_line_error(capsys, ["data", "embed", "--device", "cuda", "--artifact-root", str(root)])
    assert "device 'cuda'" in line and "no CUDA GPU" in line
    assert not root.exists()
    line = one_line_error(capsys, ["expert", "train", "--device", "cuda", "--artifact-root", str(root)])
    assert "training.device 'cuda'" in line
    assert not root.exists()


def test_artifact_root_is_a_file(capsys, tmp_path):
    target = tmp_path / "afile"
    target.write_text("not a folder")
    line = one_line_error(capsys, ["data", "cluster", "--artifact-root", str(target)])
    assert "is a file, not a folder" in line
    assert target.read_text() == "not a folder"


def test_s3_without_credentials(capsys, no_aws):
    line = one_line_error(capsys, ["data", "cluster", "--artifact-root", "s3://bucket/run"])
    assert "no S3 credentials" in line


def test_unreachable_endpoint(capsys, no_aws, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHDDMTESTKEYID000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hddm-cli-test-secret-value")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    line = one_line_error(capsys, ["data", "cluster", "--artifact-root", "s3://bucket/run"])
    assert "unreachable" in line and "hddm-cli-test-secret-value" not in line


def test_invalid_allow_hosts_refused_before_any_work(capsys, tmp_path):
    root = tmp_path / "art"
    line = one_line_error(capsys, ["data", "download", "--allow-hosts", "a/b", "--artifact-root", str(root)])
    assert "--allow-hosts" in line and "'a/b'" in line
    assert not root.exists()  # the embedded dataset used to be rendered first


def test_subprocess_prints_one_line_without_traceback(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "hddm_cli.main", "-q", "data", "cluster", "--artifact-root",
                           str(target)], capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "is a file" in proc.stderr and "Traceback" not in proc.stderr
