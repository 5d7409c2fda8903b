"""Span tokens (weft_core.span_tokens): what verifies, what does not, and the key file."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from weft_core import span_tokens
from weft_core.auth import Auth, Authenticator, Principal, Role, Rule, SpanTokenKey, TokenFile, render_token_file
from weft_core.errors import PermissionDenied, Unauthenticated
from weft_core.span_tokens import SpanGrant, export_headers_env, mint, parse_keys, token_expiry, verify

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
RUN = "namespaces/team-a/runs/r1"
TRACE = 0x0AF7651916CD43DD8448EB211C80319C
NOW = 1_800_000_000


def test_a_minted_token_verifies_to_its_grant_until_it_expires() -> None:
    token = mint(KEY, RUN, TRACE, NOW + 60)
    assert token.startswith("wst1.")
    assert verify(KEY, token, NOW) == SpanGrant(RUN, TRACE, NOW + 60)
    assert verify(KEY, token, NOW + 59.9) is not None
    assert verify(KEY, token, NOW + 60) is None


def test_a_token_of_another_key_a_tampered_one_or_garbage_does_not_verify() -> None:
    token = mint(KEY, RUN, TRACE, NOW + 60)
    assert verify(OTHER_KEY, token, NOW) is None
    signed, _, mac = token.rpartition(".")
    # Another trace in the payload, the MAC left as it was.
    payload = json.loads(base64.urlsafe_b64decode(signed[5:] + "=="))
    payload["t"] = f"{TRACE + 1:032x}"
    forged = "wst1." + base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert verify(KEY, f"{forged}.{mac}", NOW) is None
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    assert verify(KEY, f"{signed}.{flipped}", NOW) is None
    for garbage in ("", "wst1.", "wst1..", "wst1.a.b.c", "wst1.!!!.???", token + "x", "wst2" + token[4:]):
        assert verify(KEY, garbage, NOW) is None, garbage


def test_every_key_of_a_rotation_verifies() -> None:
    token = mint(OTHER_KEY, RUN, TRACE, NOW + 60)
    assert verify((KEY, OTHER_KEY), token, NOW) == SpanGrant(RUN, TRACE, NOW + 60)
    assert verify((KEY,), token, NOW) is None


def test_minting_needs_a_key_and_a_real_trace_id() -> None:
    with pytest.raises(ValueError, match="non-empty key"):
        mint(b"", RUN, TRACE, NOW)
    with pytest.raises(ValueError, match="128-bit"):
        mint(KEY, RUN, 0, NOW)


def test_the_expiry_is_the_timeout_or_a_day_plus_the_grace() -> None:
    assert token_expiry(NOW, 600) == NOW + 600 + span_tokens.EXPIRY_GRACE_SECONDS
    assert token_expiry(NOW, None) == NOW + span_tokens.DEFAULT_LIFETIME_SECONDS + span_tokens.EXPIRY_GRACE_SECONDS


def test_the_header_variable_is_opentelemetrys_url_encoded_format() -> None:
    assert export_headers_env("wst1.a.b") == {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20wst1.a.b"}


def test_a_key_file_names_the_line_that_is_wrong() -> None:
    assert parse_keys("# rotated 2026-01\n" + "a" * 40 + "\n\n" + "b" * 32 + "\n", "key") == (b"a" * 40, b"b" * 32)
    with pytest.raises(ValueError, match=r"key:2: a span token key has at least 32"):
        parse_keys("a" * 40 + "\nshort\n", "key")
    with pytest.raises(ValueError, match="no span token key"):
        parse_keys("# nothing\n", "key")


async def test_the_authenticator_takes_a_span_token_only_with_the_key_and_only_rules_that_admit_it(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "span.key"
    key_file.write_text(KEY.decode() + "\n")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(render_token_file([("ops", "ops-token", {"*": "admin"})]))
    key = SpanTokenKey(key_file)
    token = key.mint(RUN, TRACE, 4_000_000_000)
    with_key = Authenticator(TokenFile(tokens), span_key=key)
    principal = await with_key.authenticate([("authorization", f"Bearer {token}")])
    assert principal.span_grant == SpanGrant(RUN, TRACE, 4_000_000_000)
    assert dict(principal.roles) == {}
    assert principal.via == "span-token"
    assert token not in principal.subject
    with pytest.raises(Unauthenticated, match="accepted only by weft-tracer"):
        await Authenticator(TokenFile(tokens)).authenticate([("authorization", f"Bearer {token}")])
    expired = key.mint(RUN, TRACE, int(time.time()) - 1)
    with pytest.raises(Unauthenticated, match="span token is not valid"):
        await with_key.authenticate([("authorization", f"Bearer {expired}")])
    auth = Auth(with_key, {"/x/Export": Rule(Role.RUNNER, span_tokens=True), "/x/Read": Rule(Role.VIEWER)})
    auth.authorize(principal, "/x/Export", None)
    with pytest.raises(PermissionDenied, match="may only export spans of its run's trace"):
        auth.authorize(principal, "/x/Read", None)
    # A cluster admin's token file principal is not a span principal: the rule stays a role rule.
    admin = Principal("ops", {"*": Role.ADMIN})
    auth.authorize(admin, "/x/Export", None)
    with pytest.raises(PermissionDenied, match="needs the role runner"):
        auth.authorize(Principal("alice", {"team-a": Role.ADMIN}), "/x/Export", None)


def test_the_key_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    key_file = tmp_path / "span.key"
    key_file.write_text("a" * 32 + "\n")
    key = SpanTokenKey(key_file)
    old = key.mint(RUN, TRACE, 4_000_000_000)
    key_file.write_text("b" * 32 + "\n" + "a" * 32 + "\n")
    new = key.mint(RUN, TRACE, 4_000_000_000)
    assert new != old
    assert key.lookup(old) is not None
    assert key.lookup(new) is not None
    key_file.write_text("b" * 32 + "\n")
    assert key.lookup(old) is None
