"""What authentication and TLS cost CreateRun: p50/p99 at 1 and 32 in flight, plaintext
without auth beside token auth (plaintext) and token auth over TLS, in one invocation.

    .venv/bin/python bench/bench_auth.py [--requests 400] [--rounds 3]

Starts one etcd (default election settings) and three `weft-api` subprocesses on it
(each its own keyspace root): plaintext without auth, `--auth-tokens-file`, and
`--auth-tokens-file` with `--tls-cert` (certificates and the token from
`weft.localstack.LocalSecurity`, as `weft up --secure` makes them). Rounds alternate
between the servers, so drift on a shared machine hits all three alike; each figure is
the median of the rounds. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench_create_run import measure, median_of

from weft._auth import open_channel
from weft.localstack import EtcdProcess, LocalSecurity, ServiceProcess, api_process
from weft.v1 import pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc

CONCURRENCIES = (1, 32)


def spec() -> pipeline_pb2.PipelineSpec:
    """bench_create_run's pipeline: 20 steps, two parameters."""
    return pipeline_pb2.PipelineSpec(
        parameters=[pipeline_pb2.Parameter(name="size", default_value="10"), pipeline_pb2.Parameter(name="label")],
        steps=[
            pipeline_pb2.Step(
                name=f"s{i}",
                container=pipeline_pb2.Container(image="busybox:1.36", command=["true"]),
                outputs=[pipeline_pb2.Output(name="out")],
                inputs=[pipeline_pb2.Input(name="size", parameter="size")],
            )
            for i in range(20)
        ],
    )


async def bench(args: argparse.Namespace, servers: dict[str, tuple[str, dict[str, object]]]) -> None:
    results: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    channels = {name: open_channel(address, **settings) for name, (address, settings) in servers.items()}  # type: ignore[arg-type]
    try:
        calls = {}
        for name, channel in channels.items():
            pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)  # type: ignore[no-untyped-call]
            runs = run_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
            await pipelines.CreatePipeline(
                pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="bench", spec=spec()))
            )

            async def create_run(i: int, runs: object = runs) -> None:
                request = run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="bench", parameters={"label": f"r{i}"}))
                await runs.CreateRun(request)  # type: ignore[attr-defined]

            calls[name] = create_run
            await measure(create_run, 50, 8)  # warm-up: connections, TLS sessions, caches
        for _ in range(args.rounds):
            for concurrency in CONCURRENCIES:
                for name, create_run in calls.items():
                    figure = await measure(create_run, args.requests, concurrency)
                    results.setdefault((name, concurrency), []).append(figure)
    finally:
        for channel in channels.values():
            await channel.close(None)

    baseline = {c: median_of(results[("plaintext", c)]) for c in CONCURRENCIES}
    print(f"\n{'CreateRun @in flight':<34} {'p50 ms':>8} {'p99 ms':>8} {'per s':>7} {'p50 x':>7} {'p99 x':>7}")
    for concurrency in CONCURRENCIES:
        for name in servers:
            p50, p99, rate = median_of(results[(name, concurrency)])
            base = baseline[concurrency]
            print(
                f"{name + ' @' + str(concurrency):<34} {p50:8.2f} {p99:8.2f} {rate:7.0f} "
                f"{p50 / base[0]:7.2f} {p99 / base[1]:7.2f}"
            )
    print(
        f"\n{args.requests} calls per round, median of {args.rounds} rounds; x is against plaintext at the same load."
    )
    print(
        f"p50 spread across rounds, plaintext @1: {statistics.pstdev(r[0] for r in results[('plaintext', 1)]):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (the median is shown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weft-bench-auth-") as temp:
        work = Path(temp)
        security = LocalSecurity.prepare(work / "secure")
        etcd = EtcdProcess(work, fast=False)
        etcd.start()
        started: list[ServiceProcess] = []
        try:
            flags = {
                "plaintext": [],
                "token auth": ["--auth-tokens-file", str(security.tokens_file)],
                "token auth + TLS": [
                    "--auth-tokens-file", str(security.tokens_file),
                    "--tls-cert", str(security.server_cert), "--tls-key", str(security.server_key),
                ],
            }  # fmt: skip
            clients: dict[str, dict[str, object]] = {
                "plaintext": {},
                "token auth": {"token": security.admin_token()},
                "token auth + TLS": {"token": security.admin_token(), "ca_cert": security.ca_cert},
            }
            servers: dict[str, tuple[str, dict[str, object]]] = {}
            for i, (name, extra) in enumerate(flags.items()):
                api = api_process(
                    etcd.endpoint,
                    work / f"blobs-{i}",
                    work / f"weft-api-{i}.log",
                    etcd_root=f"/bench-auth-{i}",
                    extra_args=extra,
                )
                started.append(api)
                servers[name] = (api.start(), clients[name])
            asyncio.run(bench(args, servers))
        finally:
            for api in started:
                api.stop()
            etcd.stop()


if __name__ == "__main__":
    main()
