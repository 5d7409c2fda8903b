"""Benchmark of weft-tracer: how fast it ingests spans, and what tracing costs a step.

1. Ingestion: a real `weft-tracer` process (no etcd, a temporary store) receives spans
   from `--exporters` processes, each exporting its own spans through the OpenTelemetry
   SDK's real `OTLPSpanExporter` in batches of 512 (the BatchSpanProcessor's default).
   The rate is spans stored per second, from the first export to the moment
   GetTracerStatus says every span is stored; the span generation is not timed. The
   SDK's Python encoder is slow, so the same batches are then sent again, encoded by the
   SDK's own encoder ahead of time (the same bytes on the wire): that second figure is
   the tracer's capacity. Target: >= 20,000 spans/s. Each case also prints the CPU time
   per span of each side (senders: `process_time`; weft-tracer: /proc): on a shared
   machine the wall clock measures the other processes' load, CPU time does not.
   The same spans are also sent by weft's own exporter (`weft_core.otlp.SpanExporter`,
   what weft's services use). `--exporter-configs` adds the SDK exporter's other
   settings (batches of 2048 and 8192, gzip); the SDK's encoder alone is timed first.
2. Per-step overhead: the same fan-out of `true` steps is run by a `weft-executor`
   process that exports its spans to that weft-tracer, and by one that exports nothing,
   alternately, `--repeats` times each, in one invocation (same etcd, same api, cache off
   so every step launches). Printed: the median time per step of each and their ratio,
   the executor process's CPU time per step (with the exporter's backlog) and the spans
   stored per step (a full BatchSpanProcessor queue would drop some).
   Target: tracing costs under 10 %.

Not a test: it asserts only that the runs succeeded and every span was stored.

Measured on 2026-12-01 (2 cores; load average 1.7-4.7 from one other session's tests):

- weft-tracer stored 28,400 spans/s from two processes exporting through the SDK's own
  OTLPSpanExporter (target 20,000; 32,600 at load 0.5 in an earlier run of the day), and
  29,100 spans/s from pre-encoded requests, 33,200 spans/s from weft's own exporter
  (whose senders need 14.0 µs of CPU per span, against the SDK exporter's 38.3 µs).
  weft-tracer's CPU: 21.7 µs per span (~46,000 spans/s per busy core). Of the SDK
  exporter's 36-38 µs, 35 µs are its Python encoder (`encode_spans`; 51 µs in batches
  of 8192): the exporter's settings are not the
  bottleneck (larger batches and gzip cost more CPU per span, not less), and two
  exporting processes and the tracer on two cores need ~58 µs per span together.
- A 1,000-wide fan-out of `true` steps, 5 runs per mode: median 8.44 s off, 8.46 s on
  (+0.3 %); fastest runs 7.21 s off, 7.42 s on (+2.9 %). The executor's CPU: 5.09 ms per
  step off, 5.17 ms on (+1.6 %), every one of its 7 spans stored. With the SDK's
  tracer and encoder the same bench gave +15.0 % (median) and +26.7 % CPU (200 steps,
  3 runs, load 0.5; +48 % / +36 % under load earlier), and with weft's encoder but the
  SDK's spans +12.7 % and +15.9 % (1,000 steps, 5 runs): the SDK's span costs ~25 µs of
  the event loop and its encoder ~30 µs per span, where weft's tracer and encoder
  (`weft_core.tracing`, `weft_core.otlp`) together cost ~15 µs
  (`tests/unit/core/test_otlp.py` and `test_tracing.py` pin that they send the same
  spans).

    .venv/bin/python bench/bench_tracer.py [--spans 100000] [--exporters 2] [--width 200] [--repeats 3]
        [--only ingestion|overhead] [--exporter-configs]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from weft.localstack import (
    EXECUTOR_ANNOUNCE,
    EtcdProcess,
    ServiceProcess,
    api_process,
    find_service,
    otlp_env,
    tracer_process,
)
from weft.v1 import pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc, trace_pb2, trace_pb2_grpc

BATCH = 512  # the BatchSpanProcessor's max_export_batch_size default
SPANS_PER_STEP = 8  # spans shaped like an executor's (see `_make_spans`)


# Ingestion -----------------------------------------------------------------------------


def _make_spans(spans: int, index: int) -> list[Any]:
    """`spans` finished SDK spans shaped like an executor's: a step span with children
    carrying weft's attributes."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": f"bench-{index}", "host.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for n in range(spans // SPANS_PER_STEP):
        run = f"namespaces/bench/runs/r{index}-{n // 100}"
        with tracer.start_as_current_span("weft.step", attributes={"weft.run": run, "weft.step": f"s{n}"}):
            for child in ("weft.cache_lookup", "weft.attempt", "weft.input_fetch", "weft.launch"):
                with tracer.start_as_current_span(child, attributes={"weft.attempt": 1, "process.pid": 4242}):
                    pass
            for child in ("weft.output_upload", "weft.commit", "user.work"):
                with tracer.start_as_current_span(child, attributes={"weft.state": "SUCCEEDED"}):
                    pass
    return list(memory.get_finished_spans())


def encoder_cpu(spans: int, batch: int) -> float:
    """CPU seconds per span the SDK's OTLP encoder (`encode_spans`, shared by its gRPC and
    HTTP exporters) takes to turn spans into serialized requests: no network, one thread."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    finished = _make_spans(spans, 0)
    batches = [finished[i : i + batch] for i in range(0, len(finished), batch)]
    started = time.process_time()
    for chunk in batches:
        encode_spans(chunk).SerializeToString()
    return (time.process_time() - started) / len(finished)


def _exporter_main(
    target: str, spans: int, index: int, ready: Any, go: Any, results: Any, sender: str, batch: int, gzip: bool
) -> None:
    """One exporting process: makes `spans` finished spans, then exports them in batches.

    `sender` is "sdk" (the SDK's OTLPSpanExporter), "weft" (weft's services' exporter,
    `weft_core.otlp.SpanExporter`: the SDK's with a faster encoder) or "encoded": each
    batch is turned into its ExportTraceServiceRequest by the SDK's own encoder before
    the clock starts and sent by a plain stub: the same bytes the OTLPSpanExporter sends,
    without its Python encoding (which would be what is measured instead of the tracer).
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    finished = _make_spans(spans, index)
    batches = [finished[i : i + batch] for i in range(0, len(finished), batch)]
    if sender == "encoded":
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        requests = [encode_spans(batch) for batch in batches]
        channel = grpc.insecure_channel(target)
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        ready.wait()
        go.wait()
        started, cpu = time.perf_counter(), time.process_time()
        for request in requests:
            stub.Export(request, timeout=30)
        results.put((len(finished), time.perf_counter() - started, time.process_time() - cpu))
        channel.close()
        return
    compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
    from weft_core.otlp import SpanExporter

    kind = SpanExporter if sender == "weft" else OTLPSpanExporter
    exporter = kind(endpoint=f"http://{target}", insecure=True, compression=compression)
    ready.wait()
    go.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for chunk in batches:
        exporter.export(chunk)
    results.put((len(finished), time.perf_counter() - started, time.process_time() - cpu))
    exporter.shutdown()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tracer_status(target: str) -> trace_pb2.TracerStatus:
    with grpc.insecure_channel(target) as channel:
        stub = trace_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        status: trace_pb2.TracerStatus = stub.GetTracerStatus(trace_pb2.GetTracerStatusRequest(), timeout=10)
        return status


def ingestion(
    tracer: str, tracer_pid: int, spans: int, exporters: int, sender: str, batch: int = BATCH, gzip: bool = False
) -> float:
    """Spans/s stored by weft-tracer from `exporters` processes (see the module docstring)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(exporters + 1)
    go = context.Event()
    results = context.Queue()
    per_exporter = spans // exporters
    workers = [
        context.Process(target=_exporter_main, args=(tracer, per_exporter, i, ready, go, results, sender, batch, gzip))
        for i in range(exporters)
    ]
    for worker in workers:
        worker.start()
    ready.wait()  # every exporter has made its spans
    before = tracer_status(tracer).stored
    started, tracer_cpu = time.perf_counter(), cpu_seconds(tracer_pid)
    go.set()
    sent = [results.get(timeout=600) for _ in workers]
    total = sum(count for count, _, _ in sent)
    while True:
        status = tracer_status(tracer)
        if status.stored + status.duplicates + status.dropped - before >= total:
            break
        time.sleep(0.01)
    elapsed, tracer_cpu = time.perf_counter() - started, cpu_seconds(tracer_pid) - tracer_cpu
    for worker in workers:
        worker.join()
    if status.dropped or status.duplicates:
        raise RuntimeError(f"spans dropped ({status.dropped}) or duplicated ({status.duplicates})")
    send_rate = sum(count / seconds for count, seconds, _ in sent)
    sender_cpu = sum(cpu for _, _, cpu in sent)
    how = {
        "sdk": "the SDK's OTLPSpanExporter",
        "weft": "weft's exporter (weft_core.otlp.SpanExporter)",
        "encoded": "SDK-encoded requests, sent by a stub",
    }[sender]
    how += ", gzip" if gzip else ""
    print(f"\ningestion: {total} spans from {exporters} processes, batches of {batch}, {how}")
    print(f"  stored by weft-tracer            {total / elapsed:>10.0f} spans/s   ({elapsed:.2f} s; target >= 20000)")
    print(f"  the senders' own rate            {send_rate:>10.0f} spans/s   (summed; includes waiting for answers)")
    print(f"  store                            {status.store_bytes / 1e6:>10.1f} MB for {status.stored_spans} spans")
    # CPU time per span: what a loaded, shared machine's wall clock cannot say. A core
    # busy only with one side would move 1e6 / (µs per span) spans/s.
    for side, cpu in (("senders", sender_cpu), ("weft-tracer", tracer_cpu)):
        micros = cpu / total * 1e6
        print(f"  CPU per span, {side:<18} {micros:>10.1f} µs        ({1e6 / micros:,.0f} spans/s per busy core)")
    return float(total / elapsed)


# Per-step overhead ---------------------------------------------------------------------


def executor(name: str, etcd: str, api: str, work: Path, env: dict[str, str]) -> ServiceProcess:
    command = find_service("weft-executor")
    if command is None:
        raise FileNotFoundError("weft-executor is not installed (pip install -e services/executor)")
    argv = [
        command, "--etcd-endpoints", etcd, "--api", api, "--runtime", "local", "--max-parallel", "8",
        "--work-dir", str(work / name), "--listen", "127.0.0.1:0", "--etcd-root", "/bench", "--executor-id", name,
    ]  # fmt: skip
    return ServiceProcess(name, argv, work / f"{name}.log", announce=EXECUTOR_ANNOUNCE, env=env)


#: Spans an executor makes per launched step without inputs: weft.step, weft.cache_lookup,
#: weft.attempt, weft.launch, weft.wait, weft.output_upload, weft.commit (a step with
#: inputs adds weft.input_fetch).
SPANS_PER_ATTEMPT = 7


def settled(tracer: str, stored: int, quiet: float = 1.0, timeout: float = 120.0) -> None:
    """Waits until weft-tracer stored `stored` spans, or stored none more for `quiet` s."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = tracer_status(tracer).stored
        if now >= stored:
            return
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def timed_run(runs: Any, pipeline: str) -> float:
    run = run_pb2.Run(pipeline=pipeline)
    run.options.cache_mode = run_pb2.CACHE_MODE_OFF
    started = time.perf_counter()
    created = runs.CreateRun(run_pb2.CreateRunRequest(run=run))
    request = run_pb2.GetRunRequest(name=created.name, view=run_pb2.RUN_VIEW_BASIC)
    while True:
        current = runs.GetRun(request)
        if current.state in (run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    if current.state != run_pb2.Run.STATE_SUCCEEDED:
        raise RuntimeError(f"run {created.name} ended {run_pb2.Run.State.Name(current.state)}: {current.message}")
    return elapsed


def overhead(work: Path, etcd: str, api: str, tracer: str, width: int, repeats: int) -> None:
    # A root executor runs steps as nobody, who must be able to reach the work directory.
    os.chmod(work, 0o755)
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = {k: v for k, v in base.items() if not k.startswith("OTEL_")}
    settings = {"off": base, "on": {**base, **otlp_env(tracer)}}
    with grpc.insecure_channel(api) as channel:
        pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)  # type: ignore[no-untyped-call]
        runs = run_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        steps = [
            pipeline_pb2.Step(name=f"s{i:04d}", container=pipeline_pb2.Container(image="busybox", command=["true"]))
            for i in range(width)
        ]
        spec = pipeline_pb2.PipelineSpec(steps=steps)
        pipelines.CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="fan", spec=spec))
        )
        seconds: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        stored_per_run: list[int] = []
        for repeat in range(repeats):
            for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                before = tracer_status(tracer).stored
                process = executor(f"exec-{mode}-{repeat}", etcd, api, work, settings[mode])
                process.start()
                try:
                    started_cpu = cpu_seconds(process.child.pid)
                    seconds[mode].append(timed_run(runs, "namespaces/default/pipelines/fan"))
                    if mode == "on":
                        # The exporter's backlog is part of what tracing costs the executor.
                        settled(tracer, before + SPANS_PER_ATTEMPT * width)
                    cpu[mode].append(cpu_seconds(process.child.pid) - started_cpu)
                finally:
                    process.stop()  # flushes its exporter before the next one starts
                if mode == "on":
                    while (status := tracer_status(tracer)).queued:
                        time.sleep(0.05)
                    stored_per_run.append(status.stored - before)
    off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    print(f"\nper-step overhead: {width} `true` steps, cache off, 8 at a time, {repeats} runs each (median)")
    print(f"  tracing off                      {off / width * 1000:>8.2f} ms/step   ({off:.2f} s per run)")
    print(f"  tracing on (OTLP to weft-tracer) {on / width * 1000:>8.2f} ms/step   ({on:.2f} s per run)")
    print(f"  cost of tracing                  {(on / off - 1) * 100:>+8.1f} %        (target < 10 %)")
    fastest_off, fastest_on = min(seconds["off"]), min(seconds["on"])
    fastest = (fastest_on / fastest_off - 1) * 100
    print(f"  fastest runs (least disturbed)   {fastest_off:.2f} s off, {fastest_on:.2f} s on: {fastest:+.1f} %")
    for mode in ("off", "on"):
        print(f"  every run, tracing {mode:<3}          {' '.join(f'{s:.2f}' for s in seconds[mode])} s")
    cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(f"  executor CPU, tracing off        {cpu_off / width * 1000:>8.2f} ms/step   (median; its own process)")
    print(f"  executor CPU, tracing on         {cpu_on / width * 1000:>8.2f} ms/step   (with its exporter's backlog)")
    print(f"  CPU cost of tracing              {(cpu_on / cpu_off - 1) * 100:>+8.1f} %")
    for mode in ("off", "on"):
        print(f"  executor CPU, tracing {mode:<3}       {' '.join(f'{s:.2f}' for s in cpu[mode])} s")
    # The executor's BatchSpanProcessor drops spans when its queue is full: fewer stored
    # spans per step than it makes would make tracing look cheaper than it is.
    per_step = " ".join(f"{stored / width:.2f}" for stored in stored_per_run)
    print(f"  spans stored per step, each run  {per_step}  ({SPANS_PER_ATTEMPT} made)")


@contextmanager
def services(work: Path) -> Iterator[tuple[str, str, str, int]]:
    etcd = EtcdProcess(work)
    etcd.start()
    tracer = tracer_process(work / "spans.db", work / "tracer.log", extra_args=["--queue-spans", "2000000"])
    api = api_process(etcd.endpoint, work / "blobs", work / "api.log", etcd_root="/bench")
    try:
        tracer_address = tracer.start()
        api_address = api.start()
        yield etcd.endpoint, api_address, tracer_address, tracer.child.pid
    finally:
        api.stop()
        tracer.stop()
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=100_000, help="spans to ingest (default %(default)s)")
    parser.add_argument("--exporters", type=int, default=2, help="exporting processes (default %(default)s)")
    parser.add_argument("--width", type=int, default=200, help="steps of the overhead run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (default %(default)s)")
    parser.add_argument("--only", choices=("ingestion", "overhead"), help="run one part only")
    parser.add_argument(
        "--exporter-configs",
        action="store_true",
        help="also ingest with the exporter's other settings: batches of 2048 and 8192, gzip",
    )
    args = parser.parse_args()
    print(f"weft-tracer benchmark: {os.cpu_count()} CPUs")
    with (
        tempfile.TemporaryDirectory(prefix="weft-bench-tracer-") as tmp,
        services(Path(tmp)) as (etcd, api, tracer, pid),
    ):
        if args.only != "overhead":
            for batch in (BATCH, 8192):
                micros = encoder_cpu(min(args.spans, 16384), batch) * 1e6
                print(
                    f"\nthe SDK's OTLP encoder alone, batches of {batch}: {micros:.1f} µs CPU per span "
                    f"({1e6 / micros:,.0f} spans/s per busy core)"
                )
            ingestion(tracer, pid, args.spans, args.exporters, sender="sdk")
            ingestion(tracer, pid, args.spans, args.exporters, sender="weft")
            if args.exporter_configs:
                for batch, gzip in ((2048, False), (8192, False), (BATCH, True)):
                    ingestion(tracer, pid, args.spans, args.exporters, sender="sdk", batch=batch, gzip=gzip)
            ingestion(tracer, pid, args.spans, args.exporters, sender="encoded")
        if args.only != "ingestion":
            overhead(Path(tmp), etcd, api, tracer, args.width, args.repeats)


if __name__ == "__main__":
    main()
