"""The local etcd's compaction and defragmentation (`weft up`'s `EtcdMaintenance`), on a real etcd.

Many large overwrites of one key grow etcd's database file; the auto-compaction that
`EtcdProcess` configures drops the old revisions, and `EtcdMaintenance.tick()` gives the
freed pages back to the disk. A member whose quota filled up (the NOSPACE alarm, every
write refused) is brought back by the same tick. Writes go through etcd's own gateway,
as the maintenance calls do.
"""

from __future__ import annotations

import base64
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import assert_eventually
from weft.localstack import EtcdMaintenance, EtcdProcess, LocalSecurity

VALUE = base64.b64encode(b"x" * 100_000).decode()
KEY = base64.b64encode(b"/weft/test/big").decode()
TICK_KEY = base64.b64encode(b"/weft/test/tick").decode()
MIB = 1024 * 1024


def put(etcd: EtcdProcess) -> None:
    etcd.call("kv/put", {"key": KEY, "value": VALUE})


def compacted_at(etcd: EtcdProcess, revision: int) -> bool:
    try:
        etcd.call("kv/range", {"key": KEY, "revision": revision})
    except urllib.error.HTTPError as error:
        return b"compacted" in error.read()
    return False


@pytest.fixture
def compacting_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    # A retention of a second, so the test sees etcd's periodic compactor at work.
    etcd = EtcdProcess(tmp_path, compaction_retention="1s")
    etcd.start()
    yield etcd
    etcd.stop()


def test_many_writes_are_compacted_and_the_database_defragmented(compacting_etcd: EtcdProcess) -> None:
    etcd = compacting_etcd
    reports: list[str] = []
    maintenance = EtcdMaintenance(etcd, every=60.0, min_free_bytes=4 * MIB, report=reports.append)
    assert maintenance.tick(now=0.0) is None  # a fresh database: nothing worth doing
    # Superseded values until the file is over 12 MiB (compaction, running meanwhile,
    # lets etcd reuse some pages, so the count varies).
    for count in range(1, 400):
        put(etcd)
        if count % 25 == 0 and etcd.status().db_size > 12 * MIB:
            break
    assert etcd.status().db_size > 12 * MIB

    # etcd's periodic compactor catches up with the last write within a few periods.
    last = etcd.status().revision
    assert_eventually(lambda: compacted_at(etcd, last - 1), timeout=30, what="etcd compacted all but the newest")

    # The compaction revision is visible at once; the old revisions' pages show as free
    # only later: bbolt keeps the pages a commit freed pending while a read transaction
    # opened since may use them, and releases them when a later write transaction begins.
    # A live etcd always has a next write; this idle one gets a small one per look (the
    # test once waited 30 s in vain on a loaded machine for a write that never came).
    def freed() -> bool:
        etcd.call("kv/put", {"key": TICK_KEY, "value": ""})
        status = etcd.status()
        return status.free_bytes > max(6 * MIB, status.db_size / 2)

    assert_eventually(freed, timeout=30, interval=0.25, what="the compacted revisions' pages free")
    assert maintenance.tick(now=1.0) is None  # not due yet: one look per `every`
    after = maintenance.tick(now=61.0)

    assert after is not None
    assert after.db_size < 2 * MIB, after
    assert etcd.status().db_size == after.db_size
    assert reports[-1].startswith("etcd defragmented: database ")
    # The newest value is intact, and a second look finds nothing to do.
    latest = etcd.call("kv/range", {"key": KEY})
    assert latest["kvs"][0]["value"] == VALUE
    assert maintenance.tick(now=122.0) is None


def test_a_full_quota_is_recovered_and_writes_work_again(tmp_path: Path) -> None:
    # No auto-compaction within the test: only the maintenance's recovery can free space.
    etcd = EtcdProcess(tmp_path, compaction_retention="1h", quota_backend_bytes=8 * MIB)
    etcd.start()
    reports: list[str] = []
    maintenance = EtcdMaintenance(etcd, every=300.0, alarm_every=10.0, report=reports.append)
    try:
        assert maintenance.tick(now=0.0) is None  # the first, full look: nothing to do
        refused = None
        for _ in range(200):
            try:
                put(etcd)
            except urllib.error.HTTPError as error:
                refused = error.read()
                break
        assert refused is not None, "the quota never filled"
        assert b"database space exceeded" in refused, refused
        assert etcd.status().alarms == ("NOSPACE",)

        # The full look (every 5 minutes) is not due: the alarm's own look (every 10 s) acts.
        assert maintenance.tick(now=5.0) is None  # neither is due yet
        after = maintenance.tick(now=11.0)

        assert after is not None
        assert after.alarms == ()
        assert after.db_size < 2 * MIB, after
        assert len(reports) == 1
        assert "cleared its NOSPACE alarm" in reports[0]
        put(etcd)  # writes are accepted again
    finally:
        etcd.stop()


def test_maintenance_of_an_etcd_that_is_gone_reports_and_does_not_raise(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path)
    etcd.start()
    etcd.stop()
    reports: list[str] = []
    assert EtcdMaintenance(etcd, report=reports.append).tick(now=0.0) is None
    assert len(reports) == 1
    assert reports[0].startswith("etcd maintenance skipped: ")


def test_maintenance_reaches_an_etcd_that_requires_client_certificates(tmp_path: Path) -> None:
    # What `weft up --secure` runs: etcd speaks TLS only and requires a certificate of its CA.
    security = LocalSecurity.prepare(tmp_path / "secure")
    etcd = EtcdProcess(tmp_path, tls=security.etcd_tls())
    etcd.start()
    try:
        reports: list[str] = []
        assert EtcdMaintenance(etcd, report=reports.append).tick(now=0.0) is None
        assert reports == []  # looked, found nothing worth doing, and said nothing
        status = etcd.status()
        assert status.db_size > 0
        assert status.revision >= 1
    finally:
        etcd.stop()
