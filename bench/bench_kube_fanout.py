"""Benchmark of the kubernetes runtime: pods created and completed per second for a wide fan-out.

Runs a pipeline of one root step and a 500-wide fan-out below it on the test cluster
(tests/kube: a real kube-apiserver built by scripts/kube-binaries.sh, plus the simulated
kubelet), through the real weft-executor with `--runtime kubernetes`, and prints, beside
the executor's configured Kubernetes client limit (`--kube-qps`/`--kube-burst`):

- pods created per second (first to last pod ADDED, seen by a watch of our own),
- pods completed per second (first to last pod Succeeded),
- the run's end-to-end time (CreateRun until SUCCEEDED),
- the API requests the runtime made, per pod and per second.

Each step pod costs the runtime three requests (create; read the log to store it; delete
once committed) plus its share of one watch, so with a QPS limit of 20 the ceiling is
about 20/3 pods a second; a higher limit moves the bottleneck to the API server and the
simulated node. The kubelet runs in a child process (it takes ~6 requests per pod of its
own: bind, status updates, events) and completes every pod at once, reporting the output
manifest a real output container would, so the figures are the runtime's and the API
server's, not the steps'. etcd and weft-api are real processes; the executor runs in this
process so its counters can be read. Not a test.

    .venv/bin/python bench/bench_kube_fanout.py [--width 500] [--qps 20 --qps 100] [--burst 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The test cluster lives in tests/kube, which is not an installed package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from tests.kube.cluster import KubeCluster, missing_binaries_reason, start_cluster  # noqa: E402
from weft.localstack import EtcdProcess, api_process  # noqa: E402
from weft.v1 import pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc  # noqa: E402
from weft_core.blobs import RemoteBlobStore  # noqa: E402
from weft_core.keyspace import Keyspace  # noqa: E402
from weft_executor import podio  # noqa: E402
from weft_executor.config import ExecutorConfig, KubeSettings  # noqa: E402
from weft_executor.executor import Executor  # noqa: E402
from weft_executor.runtime.kube_pods import POD_SELECTOR, UPLOAD_CONTAINER  # noqa: E402

POD_IMAGE = "weft.bench/weft:dev"


# The simulated node, in a child process --------------------------------------------------


def serve_kubelet(settings: dict[str, str]) -> None:
    """Child-process mode: a simulated kubelet that completes every pod at once."""
    from kubernetes.client import ApiClient, Configuration

    from tests.kube.kubelet import Exited, PodOutcome, PodRun, SimulatedKubelet

    message = settings["message"]

    def complete_at_once(run: PodRun) -> PodOutcome:
        run.start()
        run.log("main", f"step {run.name} ran")
        return Exited(0, containers={UPLOAD_CONTAINER: Exited(0, message=message)})

    configuration = Configuration(
        host=settings["host"],
        api_key={"BearerToken": settings["token"]},
        api_key_prefix={"BearerToken": "Bearer"},
        ssl_ca_cert=settings["ca"],
    )
    configuration.connection_pool_maxsize = 64
    kubelet = SimulatedKubelet(
        ApiClient(configuration),
        tls_cert=Path(settings["cert"]),
        tls_key=Path(settings["key"]),
        behaviour=complete_at_once,
        heartbeat_interval=5.0,
    )
    kubelet.start()
    print("kubelet ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    kubelet.stop()
    if kubelet.errors:
        print(f"kubelet errors: {len(kubelet.errors)}; first: {kubelet.errors[0]}", file=sys.stderr)


@contextlib.contextmanager
def kubelet_process(cluster: KubeCluster, message: str, log_path: Path) -> Any:
    settings = {
        "host": cluster.host,
        "token": cluster.token,
        "ca": str(cluster.ca_cert_path),
        "cert": str(cluster.tls_cert_path),
        "key": str(cluster.tls_key_path),
        "message": message,
    }
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve-kubelet", json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert child.stdout is not None
    assert child.stdin is not None
    if child.stdout.readline().strip() != b"kubelet ready":
        child.kill()
        raise RuntimeError(f"the simulated kubelet did not start: {log_path.read_text()[-2000:]}")
    try:
        yield child
    finally:
        child.stdin.close()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# A watch of our own: when each pod appeared and when it succeeded -----------------------


@dataclass
class PodTimeline:
    added: dict[str, float] = field(default_factory=dict)
    succeeded: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def follow(self, cluster: KubeCluster, namespace: str) -> None:
        from kubernetes import client, watch

        with cluster.api_client() as api_client:
            core: Any = client.CoreV1Api(api_client)  # Any: the generated models are all Optional
            version = core.list_namespaced_pod(namespace).metadata.resource_version
            watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
            while not self.stop.is_set():
                for event in watcher.stream(
                    core.list_namespaced_pod,
                    namespace,
                    label_selector=POD_SELECTOR,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    pod, now = event["object"], time.perf_counter()
                    version = pod.metadata.resource_version
                    self.added.setdefault(pod.metadata.name, now)
                    if pod.status.phase == "Succeeded":
                        self.succeeded.setdefault(pod.metadata.name, now)


def rate(moments: list[float]) -> tuple[float, float]:
    """(per second, seconds) from the first to the last of `moments`."""
    if len(moments) < 2:
        return 0.0, 0.0
    span = max(moments) - min(moments)
    return (len(moments) - 1) / span if span else float("inf"), span


# The stack ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def weft_api(work: Path) -> AsyncIterator[tuple[EtcdProcess, str, Keyspace]]:
    etcd = EtcdProcess(work / "etcd")
    etcd.start()
    keyspace = Keyspace("/bench")
    api = api_process(etcd.endpoint, work / "blobs", work / "api.log", etcd_root=keyspace.root)
    address = api.start()
    try:
        yield etcd, address, keyspace
    finally:
        api.stop()
        etcd.stop()


def fan_out(width: int) -> pipeline_pb2.PipelineSpec:
    def step(name: str, upstream: str = "") -> pipeline_pb2.Step:
        # A distinct variable per step: a distinct DNA, so no step is a cache hit of another.
        container = pipeline_pb2.Container(
            image="busybox:1.36", command=["sh", "-c", "echo $SHARD > $WEFT_OUTPUTS/out"]
        )
        container.env.add(name="SHARD", value=name)
        result = pipeline_pb2.Step(name=name, container=container, outputs=[pipeline_pb2.Output(name="out")])
        if upstream:
            result.inputs.add(name="in", step_output=pipeline_pb2.OutputRef(step=upstream, output="out"))
        return result

    return pipeline_pb2.PipelineSpec(steps=[step("root")] + [step(f"s{i:04d}", "root") for i in range(width)])


@dataclass
class Figures:
    qps: float
    burst: int
    pods: int
    created_rate: float
    created_span: float
    completed_rate: float
    completed_span: float
    seconds: float
    requests: int


async def one_run(
    cluster: KubeCluster,
    etcd: EtcdProcess,
    address: str,
    keyspace: Keyspace,
    work: Path,
    args: argparse.Namespace,
    qps: float,
) -> Figures:
    from kubernetes import client

    namespace = f"bench-{int(qps)}-{os.getpid()}"
    with cluster.api_client() as api_client:
        client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    config = ExecutorConfig(
        etcd_endpoints=etcd.endpoint,
        api=address,
        work_dir=work / "attempts",
        etcd_root=keyspace.root,
        executor_id=f"bench-{int(qps)}",
        max_parallel=args.width + 1,
        runtime="kubernetes",
        kube=KubeSettings(
            namespace=namespace,
            kubeconfig=cluster.kubeconfig_path,
            pod_image=POD_IMAGE,
            kube_qps=qps,
            kube_burst=args.burst,
        ),
    )
    executor = Executor(config)
    await executor.start()
    timeline = PodTimeline()
    follower = threading.Thread(target=timeline.follow, args=(cluster, namespace), daemon=True)
    follower.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            pipelines: Any = pipeline_pb2_grpc.PipelineServiceStub(channel)  # type: ignore[no-untyped-call]
            runs: Any = run_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
            request = pipeline_pb2.CreatePipelineRequest(
                pipeline=pipeline_pb2.Pipeline(name="fan-out", spec=fan_out(args.width))
            )
            pipeline = (await pipelines.CreatePipeline(request)).name
            requests_before = executor.runtime.api.requests  # type: ignore[attr-defined]
            started = time.perf_counter()
            run = await runs.CreateRun(
                run_pb2.CreateRunRequest(
                    run=run_pb2.Run(pipeline=pipeline, options=run_pb2.RunOptions(cache_mode=run_pb2.CACHE_MODE_OFF))
                )
            )
            get = run_pb2.GetRunRequest(name=run.name, view=run_pb2.RUN_VIEW_BASIC)
            terminal = (run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED)
            while (current := await runs.GetRun(get)).state not in terminal:
                await asyncio.sleep(0.1)
            seconds = time.perf_counter() - started
            requests = executor.runtime.api.requests - requests_before  # type: ignore[attr-defined]
        if current.state != run_pb2.Run.STATE_SUCCEEDED:
            raise RuntimeError(f"run {run.name} ended {run_pb2.Run.State.Name(current.state)}: {current.message}")
    finally:
        timeline.stop.set()
        await executor.stop()
        follower.join(10)
    pods = len(timeline.added)
    created_rate, created_span = rate(list(timeline.added.values()))
    completed_rate, completed_span = rate(list(timeline.succeeded.values()))
    return Figures(qps, args.burst, pods, created_rate, created_span, completed_rate, completed_span, seconds, requests)


async def bench(args: argparse.Namespace) -> None:
    reason = missing_binaries_reason()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    print(f"weft kubernetes runtime benchmark: {os.cpu_count()} CPUs, fan-out of {args.width} (+1 root step)")
    with tempfile.TemporaryDirectory(prefix="weft-bench-kube-") as tmp, start_cluster() as cluster:
        work = Path(tmp)
        async with weft_api(work) as (etcd, address, keyspace):
            store = RemoteBlobStore(address)
            output = await store.put(b"bench output\n")
            manifest = podio.Manifest(succeeded=True, outputs={"out": output.digest}, sizes={"out": output.size})
            stored = await store.put(manifest.encode())
            await store.close()
            message = podio.TerminationMessage(manifest=stored.digest).encode()
            with kubelet_process(cluster, message, work / "kubelet.log"):
                figures = [await one_run(cluster, etcd, address, keyspace, work, args, qps) for qps in args.qps]
    print()
    print(
        f"  {'client limit':<30} {'pods':>5} {'created/s':>10} {'completed/s':>12} {'run':>8} "
        f"{'API req':>8} {'req/pod':>8} {'req/s':>7}"
    )
    for f in figures:
        limit = f"--kube-qps {f.qps:g} --kube-burst {f.burst}"
        print(
            f"  {limit:<30} {f.pods:>5} {f.created_rate:>10.1f} {f.completed_rate:>12.1f} {f.seconds:>7.1f}s "
            f"{f.requests:>8} {f.requests / max(1, f.pods):>8.1f} {f.requests / f.seconds:>7.1f}"
        )
    print(
        "\n  created/s: first to last pod ADDED; completed/s: first to last pod Succeeded (our own watch);"
        "\n  run: CreateRun until SUCCEEDED; API req: requests of the executor's runtime during the run."
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-kubelet":
        serve_kubelet(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=500, help="steps of the fan-out (default 500)")
    parser.add_argument(
        "--qps", type=float, action="append", help="executor --kube-qps; repeat to compare (default: 20 and 100)"
    )
    parser.add_argument("--burst", type=int, default=40, help="executor --kube-burst (default 40)")
    args = parser.parse_args()
    args.qps = args.qps or [20.0, 100.0]
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
