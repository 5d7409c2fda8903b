"""CreateRun is atomic even when weft-api is SIGKILLed in the middle of many of them, and
retries with the same request ids afterwards create each run exactly once."""

from __future__ import annotations

import asyncio

import grpc

from tests.integration.api.support import Clients, create_pipeline, diamond
from tests.integration.conftest import ApiProcess
from weft.v1 import run_pb2
from weft_core.blobs import digest_of
from weft_core.requests import RequestRecord
from weft_core.runs import run_summary
from weft_core.store import Store

REQUESTS = 400
IN_FLIGHT = 24
KILL_AFTER = 40


async def test_runs_are_whole_or_absent_after_a_sigkill_mid_create(api_process: ApiProcess, store: Store) -> None:
    keyspace = api_process.keyspace
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        await create_pipeline(Clients.of(channel), "etl", diamond())

    def request(i: int) -> run_pb2.CreateRunRequest:
        return run_pb2.CreateRunRequest(
            run=run_pb2.Run(pipeline="etl", parameters={"label": f"l{i}"}), request_id=f"req-{i:04d}"
        )

    succeeded: dict[int, str] = {}
    enough = asyncio.Event()

    async def create_until_killed(channel: grpc.aio.Channel, indexes: list[int]) -> None:
        runs = Clients.of(channel).runs
        for i in indexes:
            try:
                succeeded[i] = (await runs.CreateRun(request(i), timeout=10)).name
            except grpc.aio.AioRpcError:
                return  # the api is gone
            if len(succeeded) >= KILL_AFTER:
                enough.set()

    async with grpc.aio.insecure_channel(api_process.address) as channel:
        workers = [
            asyncio.create_task(create_until_killed(channel, list(range(w, REQUESTS, IN_FLIGHT))))
            for w in range(IN_FLIGHT)
        ]
        await asyncio.wait_for(enough.wait(), 30)
        api_process.kill()  # SIGKILL while IN_FLIGHT calls are between validation and commit
        await asyncio.gather(*workers)
    assert KILL_AFTER <= len(succeeded) < REQUESTS

    root = keyspace.root.encode()
    everything = {kv.key: kv for kv in (await store.range_all(root + b"/")).kvs}
    run_keys = {k: kv for k, kv in everything.items() if k.startswith(root + b"/runs/") and k.endswith(b"/run")}
    index_keys = {k: kv for k, kv in everything.items() if k.startswith(root + b"/runindex/")}
    order_keys = {k: kv for k, kv in everything.items() if k.startswith(root + b"/runorder/")}
    request_keys = {k: kv for k, kv in everything.items() if k.startswith(root + b"/requests/")}
    # Every run that exists exists whole: run key, identical index key, request key, all
    # from the same transaction; and nothing of a run exists without its run key.
    assert len(run_keys) == len(index_keys) == len(order_keys) == len(request_keys) >= len(succeeded)
    for key, kv in run_keys.items():
        run_id = key.decode().split("/")[-2]
        index = index_keys[keyspace.run_index("default", run_id)]
        record = run_pb2.Run()
        record.ParseFromString(kv.value)
        assert index.value == run_summary(record).SerializeToString()
        assert index.mod_revision == kv.mod_revision
        created = record.create_time.seconds * 1_000_000_000 + record.create_time.nanos
        assert order_keys[keyspace.run_order("default", created, run_id)].mod_revision == kv.mod_revision
        request_id = "req-" + record.parameters["label"][1:].zfill(4)
        assert RequestRecord.decode(request_keys[keyspace.request("default", request_id)].value).created == record.name
        # The value travels inline with its digest (its blob is the executor's to write).
        assert record.parameter_digests["label"] == digest_of(record.parameters["label"].encode())
    for name in succeeded.values():
        assert keyspace.run("default", name.rsplit("/", 1)[1]) in run_keys

    # Retrying every request after the restart creates each run exactly once.
    api_process.start()
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        runs = Clients.of(channel).runs
        retried = await asyncio.gather(*(runs.CreateRun(request(i)) for i in range(REQUESTS)))
    for i, name in succeeded.items():
        assert retried[i].name == name
    assert len({r.name for r in retried}) == REQUESTS
    assert await store.count(keyspace.run_index_prefix("default")) == REQUESTS
