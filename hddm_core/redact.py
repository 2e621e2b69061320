"""Credentials never reach a message, a log line, a manifest or a flow parameter: one masking function.

`mask_secrets(text)` replaces, with '***':
- URL userinfo: scheme://user:password@host -> scheme://***@host;
- AWS access key ids (AKIA/ASIA/... + 16 characters) and SigV4 parts (Credential=..., Signature=...,
  X-Amz-Credential/Signature/Security-Token=...), as botocore's debug log prints request headers;
- values after secret-looking names (aws_secret_access_key=..., "secret": "...", token, password);
- every literal value registered with `register_secret` and the current AWS_* credential variables
  (MinIO keys such as 'minioadmin' match no pattern, so they are masked by value).
`SecretMaskingFilter` applies it to every log record; `configure_log_safety` installs it on the root
handlers and caps botocore/boto3/s3fs/aiobotocore at WARNING unless HDDM_LOG_BOTOCORE=1 asks for them.
"""
from __future__ import annotations

import logging
import os
import re

MASK = "***"
# user:password@ (an AWS secret may hold '/' and '+', unescaped) or user@; the scheme is required
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)"
                       r"(?:[^/\s@'\"<>:]*:[^\s@'\"<>]*|[^/\s@'\"<>:]+)@")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b")
_SIGV4 = re.compile(r"(?P<name>(?:X-Amz-)?(?:Credential|Signature|Security-Token)=)[^,\s&'\"]+", re.IGNORECASE)
_NAMED = re.compile(r"(?P<name>(?:aws_)?(?:secret(?:_access)?_key|secret|session_token|token|password|passwd)"
                    r"['\"]?\s*[:=]\s*(?:b?['\"])?)(?P<value>[^'\"\s,}&]+)", re.IGNORECASE)
_ENV_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_REGISTERED: set[str] = set()
_MIN_LITERAL = 4  # shorter values would mask ordinary words
BOTO_LOGGERS = ("botocore", "boto3", "s3fs", "aiobotocore", "s3transfer")


def register_secret(value) -> None:
    """Mask this literal wherever it appears from now on (storage_options key/secret/token)."""
    if isinstance(value, str) and len(value) >= _MIN_LITERAL:
        _REGISTERED.add(value)


def _literals() -> list[str]:
    env = [os.environ.get(name, "") for name in _ENV_SECRETS]
    return sorted({v for v in (*_REGISTERED, *env) if v and len(v) >= _MIN_LITERAL}, key=len, reverse=True)


def mask_secrets(text) -> str:
    """text with every credential replaced by '***' (any object: its str())."""
    text = str(text)
    for literal in _literals():
        text = text.replace(literal, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _AWS_KEY_ID.sub(MASK, text)
    text = _SIGV4.sub(lambda m: f"{m['name']}{MASK}", text)
    return _NAMED.sub(lambda m: f"{m['name']}{MASK}", text)


def has_url_credentials(value: str) -> bool:
    """True when value is (or contains) a URL with user[:password]@ before its host."""
    return isinstance(value, str) and _USERINFO.search(value) is not None


class SecretMaskingFilter(logging.Filter):
    """Rewrites each record's message with mask_secrets (args folded in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a bad format string is logged as is)
            message = str(record.msg)
        masked = mask_secrets(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True


def configure_log_safety(level: int = logging.INFO) -> None:
    """Mask secrets on every root handler; keep the AWS client loggers at WARNING unless asked."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())
    explicit = os.environ.get("HDDM_LOG_BOTOCORE", "") in ("1", "true", "yes")
    for name in BOTO_LOGGERS:
        logging.getLogger(name).setLevel(level if explicit else max(level, logging.WARNING))
