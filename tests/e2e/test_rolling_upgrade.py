"""A rolling `helm upgrade` with a run in flight, on the test cluster (issue #14).

What is real: the kube-apiserver and kube-controller-manager 1.20 that roll the chart's
Deployments and StatefulSet (their strategies, surge and unavailability, readiness gating,
the order of deletes and creates), helm itself, and the weft processes behind every pod:
the simulated kubelet (tests/kube/kubelet.py) starts a real weft-api, weft-executor
(kubernetes runtime) or etcd for each pod the controllers create, reports the pod Ready
when the process's own readiness (gRPC health of its service) says SERVING, and on the
pod's deletion stops the process gracefully (SIGTERM), as a node would. The runs' step
pods are run for real too (tests.integration.kube.conftest.weft_pods). One run holds three
steps running across the whole rollout; another claims and commits a chain of steps
through it.

What is simulated, because no container runtime, image registry or kube-proxy runs here:
each pod's process is this checkout's console script (the image tag only marks the pod
template as changed), started with the test's own flags on loopback ports (the chart's
TLS certificates and tokens are not mounted; the pod's `--log-level` is passed on), one
etcd data directory stands for the member's PVC, and a TCP forwarder in the test stands
for the weft-api Service (new connections go to the api pods whose process is alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.test_helm_chart import CHART, _helm, _helm_env
from tests.integration.conftest import ApiProcess
from tests.integration.executor.support import ExecutorProcess, Harness, executor_command, steps_by_name
from tests.integration.kube.conftest import POD_IMAGE, list_pods, weft_pods
from tests.kube.cluster import KubeCluster, require_kube, start_cluster
from tests.kube.kubelet import Hold, PodOutcome, PodRun, SimulatedKubelet, by_name, start_kubelet
from tests.support import assert_eventually
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_core.keyspace import Keyspace
from weft_core.store import Store

pytestmark = [pytest.mark.kube, pytest.mark.slow]

RELEASE = "rel"
NAMESPACE = "weft-upgrade"
STEPS_NAMESPACE = "weft-upgrade-steps"
Attempt = run_pb2.Attempt
#: Steps of the run that claims and commits through the rollout, one after the other.
CHAIN = 5


class ServiceForwarder:
    """The weft-api Service as kube-proxy would make it: a loopback port whose new
    connections go round-robin to the api pods whose process is up. Open connections stay
    with their pod until its process closes them (a graceful stop does)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._backends: list[str] = []
        self._next = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.fewest_backends: int | None = None  # since `watch_backends()`
        threading.Thread(target=self._accept, daemon=True).start()

    def add(self, address: str) -> None:
        with self._lock:
            self._backends.append(address)

    def remove(self, address: str) -> None:
        with self._lock:
            self._backends.remove(address)
            if self.fewest_backends is not None:
                self.fewest_backends = min(self.fewest_backends, len(self._backends))

    def watch_backends(self) -> None:
        with self._lock:
            self.fewest_backends = len(self._backends)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                backend = self._backends[self._next % len(self._backends)] if self._backends else None
                self._next += 1
            if backend is None:
                client.close()  # no endpoint: the connection is refused, as by kube-proxy
                continue
            host, port = backend.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for end in self._sockets:
                with contextlib.suppress(OSError):
                    end.close()


def ready(target: str, service: str) -> bool:
    """The service's readiness, as the chart's readiness probe asks it."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def log_level(run: PodRun) -> str:
    """The `--log-level` the chart gave the pod's container."""
    command = run.containers[0].get("command") or []
    return next((arg.split("=", 1)[1] for arg in command if arg.startswith("--log-level=")), "INFO")


@dataclass
class Fleet:
    """The processes behind the release's pods, started and stopped by the pods' lifecycles."""

    tmp: Path
    cluster: KubeCluster
    keyspace: Keyspace
    etcd: EtcdProcess
    forwarder: ServiceForwarder
    etcd_up: threading.Event = field(default_factory=threading.Event)
    #: (pod, what happened): "started", "stopped"; in order.
    events: list[tuple[str, str]] = field(default_factory=list)
    #: The log level each pod's process was started with.
    levels: dict[str, str] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def blob_dir(self) -> Path:
        return self.tmp / "blobs"  # the ReadWriteMany blob PVC every api pod mounts

    def _record(self, pod: str, what: str) -> None:
        with self._lock:
            self.events.append((pod, what))
            (self.alive.add if what == "started" else self.alive.discard)(pod)

    def serve(self, run: PodRun, start: Any, stop: Any, target: Any, service: str) -> PodOutcome:
        """Runs one pod: start its process, report readiness while it lives, stop it on delete."""
        run.start(ready=False)
        if not self.etcd_up.wait(60) or run.stop_requested.is_set():
            return Hold()
        self.levels[run.name] = log_level(run)
        start()
        self._record(run.name, "started")
        try:
            while run.sleep(0.3):
                run.set_ready(ready(target(), service))
        finally:
            stop()
            self._record(run.name, "stopped")
        return Hold()

    def api_pod(self, run: PodRun) -> PodOutcome:
        env = {"WEFT_LOG_LEVEL": log_level(run)}
        api = ApiProcess(self.etcd.endpoint, self.keyspace, self.blob_dir, self.tmp / f"{run.name}.log", env=env)

        def start() -> None:
            api.start()
            self.forwarder.add(api.address)

        def stop() -> None:
            # The endpoint goes first (the pod is Terminating), then the graceful stop.
            if api.port:
                self.forwarder.remove(api.address)
            api.stop()

        return self.serve(run, start, stop, lambda: api.address, "weft.v1.RunService")

    def executor_pod(self, run: PodRun) -> PodOutcome:
        argv = [
            executor_command(),
            "--etcd-endpoints", self.etcd.endpoint,
            "--api", self.forwarder.address,
            "--runtime", "kubernetes",
            "--namespace", STEPS_NAMESPACE,
            "--kubeconfig", str(self.cluster.kubeconfig_path),
            "--pod-image", POD_IMAGE,
            "--max-parallel", "4",
            "--listen", "127.0.0.1:0",
            "--etcd-root", self.keyspace.root,
            "--executor-id", run.name,
            "--lease-ttl", "10",
            "--log-level", log_level(run),
        ]  # fmt: skip
        executor = ExecutorProcess(argv, self.tmp / f"{run.name}.log")
        return self.serve(run, executor.start, executor.stop, lambda: executor.address, "weft.v1.ExecutorService")

    def etcd_pod(self, run: PodRun) -> PodOutcome:
        # One member whose data directory (its PVC) outlives the pod; same port for clients.
        run.start(ready=False)
        self.etcd.start()
        self._record(run.name, "started")
        self.etcd_up.set()
        try:
            while run.sleep(0.3):
                run.set_ready(True)
        finally:
            self.etcd.stop()
            self._record(run.name, "stopped")
        return Hold()


@pytest.fixture
def cluster() -> Iterator[KubeCluster]:
    require_kube()
    with start_cluster(controller_manager=True) as running:
        from kubernetes import client

        with running.api_client() as api_client:
            core: Any = client.CoreV1Api(api_client)
            core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": STEPS_NAMESPACE}})
            for i in range(3):  # the blob store's and etcd's claims bind to these
                core.create_persistent_volume(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": f"upgrade-volume-{i}"},
                        "spec": {
                            "capacity": {"storage": "100Gi"},
                            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                            "persistentVolumeReclaimPolicy": "Retain",
                            "hostPath": {"path": f"/tmp/weft-upgrade-volume-{i}"},
                        },
                    }
                )
        yield running


def chart_pods(core: Any) -> dict[str, str]:
    """The release's pods (not Terminating), by name, with their uid."""
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
    return {p.metadata.name: p.metadata.uid for p in pods if p.metadata.deletion_timestamp is None}


async def test_a_rolling_upgrade_with_a_run_in_flight_loses_nothing(cluster: KubeCluster, tmp_path: Path) -> None:
    from kubernetes import client

    forwarder = ServiceForwarder()
    etcd = EtcdProcess(tmp_path / "etcd-pvc")
    keyspace = Keyspace("/upgrade")
    fleet = Fleet(tmp_path, cluster, keyspace, etcd, forwarder)
    behaviour = by_name(
        {
            f"{STEPS_NAMESPACE}/*": weft_pods(tmp_path / "pods"),
            f"{NAMESPACE}/{RELEASE}-weft-api-*": fleet.api_pod,
            f"{NAMESPACE}/{RELEASE}-weft-executor-*": fleet.executor_pod,
            f"{NAMESPACE}/{RELEASE}-weft-etcd-*": fleet.etcd_pod,
        },
        default=lambda run: Hold(),
    )
    env = _helm_env(cluster, tmp_path)
    kubelet: SimulatedKubelet
    with start_kubelet(cluster, behaviour, heartbeat_interval=2.0) as kubelet, cluster.api_client() as api_client:
        core: Any = client.CoreV1Api(api_client)
        try:
            _helm(
                "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                "--set", "image.tag=0.1.0", "--wait", "--timeout", "120s",
                env=env,
            )  # fmt: skip
            before = chart_pods(core)
            assert len(before) == 4, before  # two api pods, one executor, one etcd member

            store = Store(etcd.endpoint)
            async with grpc.aio.insecure_channel(forwarder.address) as channel:
                h = Harness(etcd.endpoint, forwarder.address, keyspace, fleet.blob_dir, tmp_path, channel, store)
                gate = tmp_path / "gate"
                hold = f'while [ ! -e {gate} ]; do sleep 0.05; done; printf held > "$WEFT_OUTPUTS/out"'
                steps = [h.step(f"hold-{i}", hold) for i in range(3)]
                steps.append(h.step("finish", reads={f"in{i}": (f"hold-{i}", "out") for i in range(3)}))
                pipeline = await h.apply("upgraded", steps)
                run_name = (await h.run(pipeline.name)).name
                # A second run keeps claiming and committing steps through the rollout.
                chain = [h.step("chain-0", "sleep 0.5; printf 0 > $WEFT_OUTPUTS/out")]
                for i in range(1, CHAIN):
                    script = f"sleep 0.5; cat $WEFT_INPUTS/prev > $WEFT_OUTPUTS/out; printf {i} >> $WEFT_OUTPUTS/out"
                    chain.append(h.step(f"chain-{i}", script, reads={"prev": (f"chain-{i - 1}", "out")}))
                chained = await h.apply("chained", chain)
                await asyncio.to_thread(
                    assert_eventually,
                    lambda: len(list_pods(core, STEPS_NAMESPACE)) == 3,
                    timeout=60,
                    what="the three hold steps' pods created",
                )

                # A values change that rolls every Deployment and the StatefulSet.
                chain_name = (await h.run(chained.name)).name
                forwarder.watch_backends()
                upgrade_began = time.time()
                upgraded = await asyncio.to_thread(
                    _helm,
                    "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
                    "--set", "image.tag=0.1.1", "--set", "logging.level=DEBUG",
                    "--set", "etcd.resources.requests.cpu=150m", "--wait", "--timeout", "180s",
                    env=env, check=False,
                )  # fmt: skip
                assert upgraded.returncode == 0, upgraded.stderr
                upgrade_ended = time.time()
                after = chart_pods(core)
                gate.touch()
                run = await h.wait(run_name, timeout=90)
                chain_run = await h.wait(chain_name, timeout=90)

                assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
                # Every pod was replaced, and the old processes were stopped.
                assert len(after) == 4, after
                assert not set(after.values()) & set(before.values()), (before, after)
                assert fleet.alive == set(after), fleet.events
                assert {fleet.levels[name] for name in after if "-etcd-" not in name} == {"DEBUG"}
                assert forwarder.fewest_backends is not None
                assert forwarder.fewest_backends >= 1, "the api Service had no endpoint during the rollout"
                # The held steps ran through the rollout: each launched once, in one pod,
                # with one attempt; the replacement executor adopted their pods.
                chained_steps = {f"chain-{i}": 1 for i in range(CHAIN)}
                assert h.launches() == {"hold-0": 1, "hold-1": 1, "hold-2": 1, "finish": 1, **chained_steps}
                assert chain_run.state == run_pb2.Run.STATE_SUCCEEDED, chain_run.message
                assert await h.output(chain_run, f"chain-{CHAIN - 1}") == "".join(map(str, range(CHAIN))).encode()
                ends = [step.end_time.ToDatetime().timestamp() for step in chain_run.steps]
                during = [end for end in ends if upgrade_began < end < upgrade_ended]
                assert during, f"no chained step ended during the rollout ({upgrade_began}..{upgrade_ended}: {ends})"
                by_name_ = steps_by_name(run)
                for step in [*run.steps, *chain_run.steps]:
                    assert [(a.number, a.state) for a in step.attempts] == [(1, Attempt.STATE_SUCCEEDED)], step.step
                assert len(list_pods(core, STEPS_NAMESPACE)) <= 4 + CHAIN
                assert await h.output(run, "hold-0") == b"held"
                # The replacement executor took the held steps over by re-attaching to their
                # pods (the old one stopped gracefully and revoked its lease).
                new_executor = next(n for n in after if "-executor-" in n)
                taken_over = (tmp_path / f"{new_executor}.log").read_text()
                for i in range(3):
                    assert f"step hold-{i} of {run_name}: re-attached to attempt 1" in taken_over, taken_over[-3000:]
                assert by_name_["hold-0"].executor == new_executor
                await store.close()
        finally:
            _helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "60s", env=env, check=False)
            forwarder.close()
            etcd.stop()
    assert kubelet.errors == []
