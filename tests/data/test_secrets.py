"""Credentials never appear in a message, a log line, a manifest or a flow parameter: the masking
function, the logging filter, the botocore cap, the parameter models and the command line's errors."""
from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import ValidationError

from hddm_cli.main import main
from hddm_core.pipeline.params import DownloadParams, PipelineParams, RegisterExpertParams, TrainExpertParams
from hddm_core.redact import (SecretMaskingFilter, configure_log_safety, has_url_credentials, mask_secrets,
                              register_secret)
from hddm_core.storage import ArtifactStore

KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ROOT = f"s3://{KEY_ID}:{SECRET}@bucket/prefix"


def no_secret(text: str):
    assert KEY_ID not in text and SECRET not in text, text


@pytest.mark.parametrize("text,kept", [
    (ROOT, "s3://***@bucket/prefix"),
    (f"https://user:{SECRET}@host/x.png", "https://***@host/x.png"),
    (f"Authorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/20260101/us-east-1/s3/aws4_request, "
     "SignedHeaders=host, Signature=0123abcd", "SignedHeaders=host"),
    (f"https://b.s3.amazonaws.com/k?X-Amz-Credential={KEY_ID}%2F2026&X-Amz-Signature=ab12", "X-Amz-Signature=***"),
    (f"aws_secret_access_key = {SECRET}", "aws_secret_access_key = ***"),
    (f"{{'key': '{KEY_ID}', 'secret': '{SECRET}'}}", "'secret': '***'"),
    (f"id {KEY_ID} alone", "id *** alone"),
])
def test_mask_secrets(text, kept):
    out = mask_secrets(text)
    no_secret(out)
    assert kept in out


def test_registered_literals_and_environment_values_are_masked(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio-plain-password")
    assert mask_secrets("connect with minio-plain-password") == "connect with ***"
    register_secret("custom-token-9876")
    assert "custom-token-9876" not in mask_secrets("token custom-token-9876 used")
    ArtifactStore("memory://hddm-secrets", {"key": "store-option-key-55"})
    assert mask_secrets("key store-option-key-55") == "key ***"
    assert not has_url_credentials("s3://bucket/a@b") and has_url_credentials(ROOT)


def test_logging_filter_masks_records_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskingFilter())
    log = logging.getLogger("hddm.test.secrets")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        log.debug("Sending request headers=%s", {"Authorization": f"AWS4-HMAC-SHA256 Credential={KEY_ID}/x"})
        log.info("root %s", ROOT)
        try:
            raise RuntimeError(f"failed on {ROOT}")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    no_secret(text)
    assert "Credential=***" in text and "s3://***@bucket" in text and "RuntimeError" in text


def test_botocore_loggers_capped_unless_asked(monkeypatch):
    monkeypatch.delenv("HDDM_LOG_BOTOCORE", raising=False)
    configure_log_safety(logging.DEBUG)
    assert logging.getLogger("botocore").level == logging.WARNING
    assert logging.getLogger("s3fs").level == logging.WARNING
    monkeypatch.setenv("HDDM_LOG_BOTOCORE", "1")
    configure_log_safety(logging.DEBUG)
    assert logging.getLogger("botocore").level == logging.DEBUG
    logging.getLogger("botocore").setLevel(logging.WARNING)


@pytest.mark.parametrize("build", [
    lambda: PipelineParams(artifact_root=ROOT),
    lambda: PipelineParams.model_validate({"download": {"artifact_root": ROOT}}),
    lambda: DownloadParams(artifact_root=f"{KEY_ID}:{SECRET}@bucket"),
    lambda: RegisterExpertParams(source=f"https://u:{SECRET}@host/expert", name="e1"),
    lambda: PipelineParams.model_validate({"evaluate": {"experts": [f"s3://{KEY_ID}:{SECRET}@b/e"]}}),
])
def test_params_refuse_credentials_without_echoing_them(build):
    with pytest.raises(ValidationError) as err:
        build()
    no_secret(str(err.value))  # what Prefect records as the failed run's message
    no_secret(json.dumps([e["msg"] for e in err.value.errors()]))
    assert "credentials" in str(err.value) or "'@'" in str(err.value)


def test_artifact_root_json_schema_refuses_at_sign():
    """The flow parameter schema: Prefect validates a run's parameters against it before storing them."""
    schema = PipelineParams.model_json_schema()
    assert {"pattern": "^[^@]*$", "type": "string"} in schema["properties"]["artifact_root"]["anyOf"]


@pytest.mark.parametrize("field,value", [("lr", float("inf")), ("lr", float("nan")), ("ema_decay", float("nan"))])
def test_params_refuse_non_finite_numbers(field, value):
    with pytest.raises(ValidationError, match="finite"):
        TrainExpertParams.model_validate({"training": {field: value}})


@pytest.mark.parametrize("argv", [
    ["data", "download", "--artifact-root", ROOT],
    ["data", "cluster", "--artifact-root", f"{KEY_ID}:{SECRET}@bucket/x"],
    ["expert", "register", "--source", f"https://u:{SECRET}@h/e", "--name", "e1"],
])
def test_cli_refusal_masks_credentials(argv, capsys):
    assert main(argv) == 2
    out = capsys.readouterr()
    no_secret(out.err + out.out)
    assert out.err.count("\n") == 1 and "credentials" in out.err


def test_cli_verbose_logging_masks_credentials(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert main(["-v", "data", "download", "--artifact-root", str(tmp_path / "f"), "--allow-hosts", "a/b"]) == 2
    logging.getLogger("hddm.test").warning("secret is %s", SECRET)
    no_secret(capsys.readouterr().err)
