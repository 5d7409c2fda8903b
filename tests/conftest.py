"""Fixtures that start real things: an etcd server (a real process on a free port).

One etcd serves the whole session; each test gets its own keyspace root so tests never
see each other's keys. Tests that stop or restart etcd ask for `private_etcd` instead.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from weft.localstack import EtcdProcess
from weft_core.keyspace import Keyspace
from weft_core.store import Store

_roots = itertools.count()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """A real etcd server shared by the session."""
    server = EtcdProcess(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A real etcd server of this test alone, which it may stop, kill and restart."""
    server = EtcdProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def keyspace(request: pytest.FixtureRequest) -> Keyspace:
    """A keyspace root no other test uses."""
    return Keyspace(root=f"/t{next(_roots)}-{request.node.name[:40]}")


@pytest.fixture
async def store(etcd: EtcdProcess) -> AsyncIterator[Store]:
    """A Store connected to the session's etcd."""
    client = Store(etcd.endpoint)
    yield client
    await client.close()
