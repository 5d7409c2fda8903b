"""GetLineage on real runs, checked against the graph the test builds.

A 4-by-6 lattice of steps (each step of a layer reads two steps of the layer before) is
run three times: as written, with one step's command edited, and with the parameter the
first step reads changed. The expected lineage is computed here from the test's own
graph and the DNAs the runs recorded, and compared with what GetLineage answers.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping

import grpc
import pytest

from tests.integration.api.support import Clients
from tests.integration.conftest import running_api
from tests.integration.executor.support import Harness, steps_by_name
from weft.v1 import pipeline_pb2, run_pb2
from weft_api.lineage_sweep import LineageSweep
from weft_core import lineage as lineage_index
from weft_core.blobs import DirectoryBlobStore
from weft_core.keyspace import Keyspace
from weft_core.store import Store
from weft_executor import steps as steps_module

LAYERS, WIDTH = 4, 6
Direction = run_pb2.LineageDirection


def name(layer: int, index: int) -> str:
    return f"s{layer}-{index}"


def lattice(h: Harness, edited: str = "") -> tuple[list[pipeline_pb2.Step], dict[str, list[str]]]:
    """The steps and, for each step, the steps it reads (in input order a, b)."""
    steps: list[pipeline_pb2.Step] = []
    reads: dict[str, list[str]] = {}
    for index in range(WIDTH):
        step = name(0, index)
        script = f'echo "{step} $(cat "$WEFT_INPUTS/seed")" > "$WEFT_OUTPUTS/out"'
        if index == 0:
            steps.append(h.step(step, script, parameters={"seed": "seed"}))
        else:
            steps.append(h.step(step, script, literals={"seed": f"fixed-{index}"}))
        reads[step] = []
    for layer in range(1, LAYERS):
        for index in range(WIDTH):
            step = name(layer, index)
            a, b = name(layer - 1, index), name(layer - 1, (index + 1) % WIDTH)
            extra = " edited" if step == edited else ""
            script = f'echo "{step}{extra} $(cat "$WEFT_INPUTS/a") $(cat "$WEFT_INPUTS/b")" > "$WEFT_OUTPUTS/out"'
            steps.append(h.step(step, script, reads={"a": (a, "out"), "b": (b, "out")}))
            reads[step] = [a, b]
    return steps, reads


def bfs(edges: set[tuple[str, str]], start: str, depth: int, downstream: bool) -> set[str]:
    following: dict[str, set[str]] = collections.defaultdict(set)
    for producer, consumer in edges:
        if downstream:
            following[producer].add(consumer)
        else:
            following[consumer].add(producer)
    seen, frontier = {start}, {start}
    for _ in range(depth):
        frontier = {n for f in frontier for n in following[f]} - seen
        seen |= frontier
    return seen - {start}


async def lineage(h: Harness, **fields: object) -> run_pb2.Lineage:
    response: run_pb2.Lineage = await h.clients.runs.GetLineage(run_pb2.GetLineageRequest(**fields))  # type: ignore[arg-type]
    return response


async def all_pages(h: Harness, **fields: object) -> list[run_pb2.LineageNode]:
    nodes: list[run_pb2.LineageNode] = []
    token = ""
    while True:
        page = await lineage(h, page_size=5, page_token=token, **fields)
        assert len(page.nodes) <= 5
        nodes.extend(page.nodes)
        token = page.next_page_token
        if not token:
            return nodes


async def test_lineage_up_and_down_matches_the_graph_across_runs_and_edits(harness: Harness) -> None:
    h = harness
    await h.start_executor(max_parallel=6)
    steps, reads = lattice(h)
    pipeline = await h.apply("lattice", steps, {"seed": "1"})
    runs = [await h.wait((await h.run(pipeline.name)).name)]
    edited_steps, _ = lattice(h, edited=name(1, 2))
    edited = await h.apply("lattice", edited_steps, {"seed": "1"})
    runs.append(await h.wait((await h.run(edited.name)).name))
    runs.append(await h.wait((await h.run(edited.name, {"seed": "2"})).name))
    assert all(r.state == run_pb2.Run.STATE_SUCCEEDED for r in runs)

    # The graph as the test built it, over the DNAs the runs recorded.
    edges: set[tuple[str, str]] = set()
    for run in runs:
        dna = {s: record.outcome.dna for s, record in steps_by_name(run).items()}
        edges |= {(dna[upstream], dna[step]) for step, upstreams in reads.items() for upstream in upstreams}
    last = steps_by_name(runs[2])
    sink = last[name(3, 0)]

    full_up = await lineage(
        h, run=runs[2].name, step=name(3, 0), direction=Direction.LINEAGE_DIRECTION_UPSTREAM, depth=20
    )
    assert {n.dna for n in full_up.nodes if n.distance < 0} == bfs(edges, sink.outcome.dna, 20, downstream=False)
    assert [n.dna for n in full_up.nodes if n.distance == 0] == [sink.outcome.dna]
    shallow = await lineage(
        h, run=runs[2].name, step=name(3, 0), direction=Direction.LINEAGE_DIRECTION_UPSTREAM, depth=2
    )
    assert {n.dna for n in shallow.nodes if n.distance < 0} == bfs(edges, sink.outcome.dna, 2, downstream=False)
    assert {n.distance for n in shallow.nodes} == {0, -1, -2}
    # Upstream reaches what the output was built from: the parameter's digest and the command.
    root = next(n for n in full_up.nodes if n.step == name(0, 0))
    assert root.inputs["seed"] == runs[2].parameter_digests["seed"]
    assert root.run == runs[2].name
    assert any(c.name == "command" for c in root.components)
    assert {(e.producer, e.consumer) for e in full_up.edges} <= edges

    # Downstream of an outcome every run reused: consumers from every run that consumed it.
    shared = steps_by_name(runs[0])[name(0, 3)].outcome.dna
    assert last[name(0, 3)].outcome.dna == shared
    down = await all_pages(
        h, parent="namespaces/default", outcome=shared, direction=Direction.LINEAGE_DIRECTION_DOWNSTREAM, depth=20
    )
    assert {n.dna for n in down if n.distance > 0} == bfs(edges, shared, 20, downstream=True)
    assert len({n.dna for n in down}) == len(down)  # pages do not repeat nodes
    both = await lineage(h, parent="namespaces/default", outcome=shared, depth=1)
    assert {n.dna for n in both.nodes if n.distance == 1} == bfs(edges, shared, 1, downstream=True)
    assert not [n for n in both.nodes if n.distance < 0]  # a root has no upstream outcome


async def test_lineage_from_a_blob_finds_its_producer_and_every_consumer(harness: Harness) -> None:
    h = harness
    await h.start_executor(max_parallel=6)
    steps, _ = lattice(h)
    pipeline = await h.apply("lattice", steps, {"seed": "1"})
    first = await h.wait((await h.run(pipeline.name)).name)
    edited_steps, _ = lattice(h, edited=name(1, 2))
    edited = await h.apply("lattice", edited_steps, {"seed": "1"})
    second = await h.wait((await h.run(edited.name)).name)
    blob = steps_by_name(first)[name(1, 3)].outcome.outputs["out"]

    found = await lineage(h, parent="namespaces/default", blob=blob, depth=1)

    expected_consumers = set()
    for run in (first, second):
        for record in run.steps:
            if any(c.name.startswith("input:") and c.value == blob for c in record.explanation.components):
                expected_consumers.add(record.outcome.dna)
    # s2-2 (its other input edited in the second run: a new outcome) and s2-3 read it.
    assert len(expected_consumers) == 3
    assert list(found.blob_producers) == [steps_by_name(first)[name(1, 3)].outcome.dna]
    assert set(found.blob_consumers) == expected_consumers
    assert {n.dna for n in found.nodes if n.distance == 1} == expected_consumers
    # A parameter's blob has consumers and no producer.
    seed = await lineage(h, parent="namespaces/default", blob=first.parameter_digests["seed"])
    assert list(seed.blob_producers) == []
    assert list(seed.blob_consumers) == [steps_by_name(first)[name(0, 0)].outcome.dna]


async def test_get_lineage_refuses_two_starts_and_a_bad_digest(harness: Harness) -> None:
    h = harness
    with pytest.raises(grpc.aio.AioRpcError) as two:
        await lineage(h, parent="namespaces/default", outcome="sha256:" + "0" * 64, blob="sha256:" + "0" * 64)
    assert two.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one start" in (two.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await lineage(h, parent="namespaces/default", blob="md5:abc")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "blob" in (bad.value.details() or "")


def _chain(h: Harness) -> list[pipeline_pb2.Step]:
    return [
        h.step("generate", 'echo "seed $(cat "$WEFT_INPUTS/seed")" > "$WEFT_OUTPUTS/out"', parameters={"seed": "seed"}),
        h.step("middle", 'tr a-z A-Z < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("generate", "out")}),
        h.step("report", 'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("middle", "out")}),
    ]


def _skip_indexing(monkeypatch: pytest.MonkeyPatch, step: str) -> list[str]:
    """Fault injection: the executor commits `step`'s outcome and then writes no lineage
    index for it, as if it stopped between the two (a real crash cannot be timed there).
    Returns the names of the runs whose index was skipped."""
    real = lineage_index.index_outcome
    skipped: list[str] = []

    async def index_all_but_one(
        store: Store, keyspace: Keyspace, namespace: str, outcome: run_pb2.Outcome, digests: Mapping[str, str]
    ) -> int:
        if outcome.step == step:
            skipped.append(outcome.run)
            return 0
        return await real(store, keyspace, namespace, outcome, digests)

    monkeypatch.setattr(steps_module, "index_outcome", index_all_but_one)
    return skipped


async def test_an_outcome_left_unindexed_is_found_meanwhile_and_indexed_by_the_api_sweep(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An executor that committed `middle` but never indexed it: GetLineage still walks
    through it (from the outcome cache, or from its consumer's run when the run kept no
    outcome cache) and marks it unindexed, while downstream from `generate` misses it;
    an api started afterwards sweeps it into the index and the walk is whole."""
    h = harness
    skipped = _skip_indexing(monkeypatch, "middle")
    await h.start_executor()
    pipeline = await h.apply("unindexed", _chain(h), {"seed": "1"})
    cached = await h.wait((await h.run(pipeline.name)).name)
    uncached = await h.wait((await h.run(pipeline.name, {"seed": "2"}, cache_mode=run_pb2.CACHE_MODE_OFF)).name)
    assert skipped == [cached.name, uncached.name]
    up = Direction.LINEAGE_DIRECTION_UPSTREAM

    for run in (cached, uncached):
        dna = {s: r.outcome.dna for s, r in steps_by_name(run).items()}
        walked = await lineage(h, run=run.name, step="report", direction=up, depth=2)
        assert {n.step: (n.dna, n.run, n.unindexed) for n in walked.nodes} == {
            "report": (dna["report"], run.name, False),
            "middle": (dna["middle"], run.name, True),
            "generate": (dna["generate"], run.name, False),
        }
        started_there = await lineage(h, run=run.name, step="middle", direction=up, depth=1)
        assert [(n.step, n.unindexed) for n in started_there.nodes if n.distance == 0] == [("middle", True)]
        missing = await lineage(
            h, parent="namespaces/default", outcome=dna["generate"], direction=Direction.LINEAGE_DIRECTION_DOWNSTREAM
        )
        assert [n.step for n in missing.nodes] == ["generate"]  # the gap the sweep closes

    swept_api = running_api(h.etcd_endpoint, h.keyspace, h.blob_dir, lineage_sweep_interval=3600)
    async with swept_api as swept, grpc.aio.insecure_channel(swept.address) as channel:
        runs = Clients.of(channel).runs
        for run in (cached, uncached):
            dna = {s: r.outcome.dna for s, r in steps_by_name(run).items()}
            request = run_pb2.GetLineageRequest(
                parent="namespaces/default",
                outcome=dna["generate"],
                direction=Direction.LINEAGE_DIRECTION_DOWNSTREAM,
            )
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                down = await runs.GetLineage(request)
                if len(down.nodes) == 3 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert {n.step: (n.dna, n.unindexed) for n in down.nodes} == {
                "generate": (dna["generate"], False),
                "middle": (dna["middle"], False),
                "report": (dna["report"], False),
            }


async def test_the_sweep_is_bounded_per_tick_and_resumes_from_its_cursor_in_etcd(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    _skip_indexing(monkeypatch, "generate")
    await h.start_executor()
    pipeline = await h.apply("resumable", _chain(h), {"seed": "1"})
    runs = [await h.wait((await h.run(pipeline.name, {"seed": str(i)})).name) for i in range(3)]
    ids = sorted(r.name.rsplit("/", 1)[-1] for r in runs)
    blobs = DirectoryBlobStore(h.blob_dir)

    first = await LineageSweep(h.store, h.keyspace, blobs, runs_per_tick=2).tick()
    # A new sweep (a restarted api) goes on from the cursor the first one saved.
    second = LineageSweep(h.store, h.keyspace, blobs, runs_per_tick=2)
    assert await second.cursor() == f"default/{ids[1]}"
    rest = await second.tick()
    again = await second.sweep_pass()

    assert (first.runs, first.outcomes, first.indexed, first.finished) == (2, 6, 2, False)
    assert (rest.runs, rest.outcomes, rest.indexed, rest.finished) == (1, 3, 1, True)
    assert await second.cursor() == ""
    assert (again.runs, again.indexed) == (3, 0)  # nothing left to index
    for run in runs:
        generate = steps_by_name(run)["generate"].outcome.dna
        down = await lineage(
            h, parent="namespaces/default", outcome=generate, direction=Direction.LINEAGE_DIRECTION_DOWNSTREAM
        )
        assert [n.step for n in down.nodes] == ["generate", "middle", "report"]
        assert not any(n.unindexed for n in down.nodes)
