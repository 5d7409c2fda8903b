"""Fixtures of the auth tests: a token file of known principals, a weft-api with auth on,
channels that carry a principal's token, and a local CA for TLS.

Principals (roles by namespace):

    cluster-admin   "*": admin      (what executors and weft-api use as their peer token)
    viewer-a        team-a: viewer
    runner-a        team-a: runner
    admin-a         team-a: admin
    viewer-b        team-b: viewer
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.conftest import InProcessApi, running_api
from weft._auth import open_channel
from weft._pki import Issued, LocalCA
from weft.localstack import EtcdProcess
from weft_core.auth import render_token_file
from weft_core.keyspace import Keyspace

ROLES: dict[str, dict[str, str]] = {
    "cluster-admin": {"*": "admin"},
    "viewer-a": {"team-a": "viewer"},
    "runner-a": {"team-a": "runner"},
    "admin-a": {"team-a": "admin"},
    "viewer-b": {"team-b": "viewer"},
}


@dataclass
class Tokens:
    """The token file of the test and the clear tokens only the test knows."""

    path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def write(self) -> None:
        # Written beside and renamed, as a rotated Kubernetes Secret appears: never half a file.
        entries = [(subject, self.tokens[subject], roles) for subject, roles in ROLES.items() if subject in self.tokens]
        spool = self.path.with_suffix(".new")
        spool.write_text(render_token_file(entries))
        os.replace(spool, self.path)

    def rotate(self, subject: str) -> str:
        """Gives `subject` a new token (the old one stops working) and returns it."""
        self.tokens[subject] = secrets.token_urlsafe(32)
        self.write()
        return self.tokens[subject]

    def channel(self, address: str, subject: str = "", **tls: Any) -> grpc.aio.Channel:
        """A channel to `address` carrying `subject`'s token (none for "")."""
        return open_channel(address, token=self.tokens[subject] if subject else "", **tls)


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    issued = Tokens(tmp_path / "tokens.yaml", {subject: secrets.token_urlsafe(32) for subject in ROLES})
    issued.write()
    return issued


@pytest.fixture
async def secure_api(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, tokens: Tokens
) -> AsyncIterator[InProcessApi]:
    """A weft-api with bearer-token auth on (plaintext), its peer token the cluster admin's."""
    async with running_api(
        etcd.endpoint,
        keyspace,
        tmp_path / "blobs",
        auth_tokens_file=tokens.path,
        peer_token=tokens.tokens["cluster-admin"],
    ) as server:
        yield server


@dataclass(frozen=True)
class Pki:
    """A local CA with a server certificate for 127.0.0.1 and a client certificate."""

    ca: LocalCA
    server: Issued
    client: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = LocalCA.create(tmp_path / "pki")
    return Pki(ca, ca.issue("server", ("localhost", "127.0.0.1")), ca.issue("client", (), client=True))
