"""Span tokens: the per-attempt credential that lets a step export spans of its run's trace.

A step's own code exports OpenTelemetry spans to weft-tracer, which with auth on needs a
bearer token; the services' peer token is cluster-wide and must never reach a step. So
the executor mints, for each attempt, a token that allows one thing: `Export` of spans
of that run's trace, until an expiry:

    token = mint(key, "namespaces/team-a/runs/r1", trace_id, expires_at=time.time() + 3600)
    grant = verify(key, token, now=time.time())   # SpanGrant, or None: forged, tampered, expired

A token is `wst1.<payload>.<mac>`: base64url (unpadded) of a compact JSON payload (run,
trace id, expiry in Unix seconds) and of its HMAC-SHA256 under a shared secret key. The
version lives in the prefix, and the prefix is inside the MAC, so a payload cannot be
replayed under another version. The key is a file given to weft-executor (which mints)
and weft-tracer (which verifies), re-read when it changes (`weft_core.auth.SpanTokenKey`);
it may hold several keys, one a line: the first mints, every one verifies, so a key is
rotated by adding the new one first and removing the old one a day later.

This module never logs, stores or returns a token or a key: callers put the token in the
step's environment (`export_headers_env`) and nowhere else (not a record, span, log line
or the step's DNA).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

#: What every span token starts with (the format's version; part of the MAC).
PREFIX = "wst1."
#: Fewest characters a key line may have (32 random bytes are 43 base64 or 64 hex).
MIN_KEY_CHARS = 32
#: Seconds a token outlives its step's timeout: the exporter's last flush happens after
#: the step's code ends, and a pod may wait to be scheduled before its clock starts.
EXPIRY_GRACE_SECONDS = 15 * 60
#: Lifetime of a token of a step without a timeout.
DEFAULT_LIFETIME_SECONDS = 24 * 3600
#: The OpenTelemetry variable the token reaches a step's exporters through.
HEADERS_ENV = "OTEL_EXPORTER_OTLP_HEADERS"


@dataclass(frozen=True)
class SpanGrant:
    """What a valid span token allows: exporting spans of one trace until `expires_at`.

    Attributes:
        run: The run's resource name (`namespaces/{ns}/runs/{r}`), for messages.
        trace_id: The run's trace id (the 128-bit W3C trace id of its traceparent).
        expires_at: Unix seconds after which the token is refused.
    """

    run: str
    trace_id: int
    expires_at: int

    @property
    def trace_id_bytes(self) -> bytes:
        """The trace id as OTLP carries it (16 bytes, big-endian)."""
        return self.trace_id.to_bytes(16, "big")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode(), hashlib.sha256).digest()


def looks_like_span_token(token: str) -> bool:
    """Whether `token` has the span token format (says nothing about its validity)."""
    return token.startswith(PREFIX)


def mint(key: bytes, run: str, trace_id: int, expires_at: int) -> str:
    """A span token for the spans of trace `trace_id` (run `run`) until `expires_at`.

    Raises:
        ValueError: The key is empty or the trace id is not a 128-bit non-zero id.
    """
    if not key:
        raise ValueError("a span token needs a non-empty key")
    if not 0 < trace_id < 1 << 128:
        raise ValueError("a span token's trace id is a non-zero 128-bit id")
    payload = json.dumps({"r": run, "t": f"{trace_id:032x}", "e": int(expires_at)}, separators=(",", ":"))
    signed = PREFIX + _b64(payload.encode())
    return f"{signed}.{_b64(_mac(key, signed))}"


def verify(keys: bytes | Sequence[bytes], token: str, now: float) -> SpanGrant | None:
    """The grant of `token` if one of `keys` made it and it has not expired, else None.

    The MAC is checked (in constant time) before anything in the payload is believed.
    """
    if not looks_like_span_token(token):
        return None
    signed, dot, mac_text = token.rpartition(".")
    if not dot or signed.count(".") != 1:
        return None
    try:
        mac = _unb64(mac_text)
        payload = json.loads(_unb64(signed[len(PREFIX) :]))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    candidates = [keys] if isinstance(keys, bytes) else list(keys)
    # Every key is tried, so the time taken does not say which key (if any) matched.
    matched = False
    for key in candidates:
        matched |= bool(key) and hmac.compare_digest(_mac(key, signed), mac)
    if not matched or not isinstance(payload, dict):
        return None
    run, trace_hex, expires_at = payload.get("r"), payload.get("t"), payload.get("e")
    if not isinstance(run, str) or not isinstance(trace_hex, str) or type(expires_at) is not int:
        return None
    try:
        trace_id = int(trace_hex, 16)
    except ValueError:
        return None
    if len(trace_hex) != 32 or trace_id == 0 or now >= expires_at:
        return None
    return SpanGrant(run, trace_id, expires_at)


def token_expiry(now: float, timeout: float | None) -> int:
    """When a token minted `now` for a step with this timeout (seconds, None: none) expires."""
    lifetime = timeout if timeout and timeout > 0 else DEFAULT_LIFETIME_SECONDS
    return int(now + lifetime + EXPIRY_GRACE_SECONDS)


def export_headers_env(token: str) -> dict[str, str]:
    """The variable that makes a step's OpenTelemetry exporters send `token`.

    OTEL_EXPORTER_OTLP_HEADERS is `key=value,...` with URL-encoded values; a token is
    base64url and dots, so only the space after "Bearer" needs encoding.
    """
    return {HEADERS_ENV: f"authorization=Bearer%20{token}"}


def parse_keys(text: str, source: str) -> tuple[bytes, ...]:
    """The keys of a key file: one per line (the first mints), blank lines and `#` comments skipped.

    Raises:
        ValueError: No key, or a key shorter than `MIN_KEY_CHARS` (the message says where).
    """
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if len(value) < MIN_KEY_CHARS:
            raise ValueError(
                f"{source}:{number}: a span token key has at least {MIN_KEY_CHARS} characters "
                "(e.g. `openssl rand -hex 32`)"
            )
        keys.append(value.encode())
    if not keys:
        raise ValueError(f"{source}: no span token key; write one, e.g. `openssl rand -hex 32 > {source}`")
    return tuple(keys)
