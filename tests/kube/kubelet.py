"""A simulated kubelet: one Node that binds, "runs" and reports pods for a test control plane.

The test cluster (tests.kube.cluster) has a real kube-apiserver but no scheduler, kubelet or
container runtime. This module plays node + scheduler inside the test process, so that code
under test (weft's Kubernetes runtime, helm) sees pods move exactly as on a real cluster:
bound to a node, Pending with ContainerCreating, Running, then Succeeded or Failed with
container exit codes and reasons, logs readable through the API (also with ``follow``),
graceful deletes confirmed. It never runs containers itself; what a pod "does" is decided by
a **behaviour** that the test supplies.

Behaviours
----------
A behaviour is any callable ``(run: PodRun) -> PodOutcome | None``. The kubelet calls it in a
thread of its own for every pod it takes (a pod not yet bound to a node, or bound to this
node), before the pod is bound. Inside, the behaviour drives the pod with `PodRun`'s methods
and returns how the pod ends:

- ``run.pod``: the pod as the API server last reported it (a JSON dict, camelCase keys).
- ``run.bind()``, ``run.unschedulable(msg)``: schedule the pod here, or refuse (PodScheduled
  False, reason Unschedulable) and never bind it.
- ``run.waiting(container, reason, message)``: e.g. ``ErrImagePull`` / ``ImagePullBackOff``.
- ``run.init_running(name)``, ``run.init_exited(name, exit_code)``: init containers.
- ``run.start(ready=True)``: init containers completed, all containers running, phase Running.
- ``run.exited(container, exit_code, reason)``: one main container ends while the others run.
- ``run.set_ready(ready, container=None)``: flip readiness (Deployments wait for it).
- ``run.log(container, *lines)``: append to the container's log, served at
  ``/containerLogs/{ns}/{pod}/{container}`` to the apiserver's log API.
- ``run.event(reason, message, kind="Warning")``: record an Event on the pod (the methods
  above record the usual ones: Scheduled, FailedScheduling, Started, Failed/BackOff, Evicted).
- ``run.sleep(seconds)`` / ``run.stop_requested``: wait, but wake up (returning False) when the
  pod is being deleted or the kubelet stops; behaviours must return promptly then.

Return ``Exited(exit_code, reason, message, containers={...})`` to terminate the containers
(phase Succeeded when every exit code is 0, else Failed), ``Evicted(message)`` for an
eviction (phase Failed, reason Evicted), or ``Hold()`` / None to keep the pod as it is until
it is deleted (or until someone calls ``run.finish(outcome)``, e.g. a test holding the run it
got from ``kubelet.run_of(namespace, name)``). Whatever the behaviour did not do is filled in:
an ``Exited`` pod that was never bound or started is bound and started first, so watchers
still see Pending -> Running -> end.

Ready-made behaviours: `succeed`, `fail`, `complete`, `oom_killed`, `evicted`,
`image_pull_failure`, `unschedulable`, `keep_running` (long-running services, e.g. a helm
release's Deployments), `run_locally`, and `by_name` to route pods to behaviours by
``namespace/name`` glob.

Running containers for real: `run_locally` runs each container's ``command + args`` as a local
subprocess with the environment the pod spec gives it (``env`` values with ``$(VAR)``
expansion, ``fieldRef``, ``secretKeyRef``, ``configMapKeyRef``, ``envFrom``), streams its
stdout/stderr into the container log and reports its exit code (a signal N becomes 128+N, as
container runtimes do); init containers run first, in order. Images and volumes are not
simulated: a test maps them with ``prepare=``, a function that may rewrite the argv,
environment and working directory of each container (e.g. point ``/var/lib/weft/...`` paths at
a temp dir). A container whose secret or config map is missing waits with
CreateContainerConfigError, as on a real node. Any other ``(run) -> outcome`` function works
the same way, so a test of weft's executor can run its step pods for real::

    def map_volumes(run: PodRun, container: dict, process: LocalProcess) -> LocalProcess:
        env = {k: v.replace("/var/lib/weft", str(tmp_path)) for k, v in process.env.items()}
        return LocalProcess(argv=process.argv, env=env, cwd=str(tmp_path))

    with start_cluster() as cluster, start_kubelet(cluster, run_locally(prepare=map_volumes)):
        ...  # the executor's pods now run their commands here and report real exit codes

    def my_step(run: PodRun) -> PodOutcome:  # or write the behaviour yourself
        run.start()
        code = do_the_work(run.pod["spec"]["containers"][0], log=lambda line: run.log("main", line))
        return Exited(code)

What this kubelet never does: restart containers (restartPolicy is not honoured: an exited
container ends the pod), enforce resources, node selectors, affinities or taints, or touch
pods bound to other nodes. It keeps its node alive (Lease in kube-node-lease and node status
heartbeats), or kube-controller-manager would mark it NotReady after ~40 s and evict pods.
Unexpected errors in its threads are collected in ``SimulatedKubelet.errors`` rather than
raised, so a test can assert there were none.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fnmatch
import hashlib
import http.server
import itertools
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import urllib3

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from tests.kube.cluster import KubeCluster

__all__ = [
    "Behaviour",
    "ContainerLog",
    "Evicted",
    "Exited",
    "Hold",
    "LocalProcess",
    "PodGone",
    "PodOutcome",
    "PodRun",
    "SimulatedKubelet",
    "by_name",
    "complete",
    "evicted",
    "fail",
    "image_pull_failure",
    "keep_running",
    "oom_killed",
    "run_locally",
    "start_kubelet",
    "succeed",
    "unschedulable",
]

_log = logging.getLogger(__name__)

JSON = dict[str, Any]

KUBELET_VERSION = "v1.20.2"
_WATCH_TIMEOUT_SECONDS = 300


# -- outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exited:
    """The containers terminated.

    Attributes:
        exit_code: the exit code of every container not named in ``containers``.
        reason: the terminated reason; default "Completed" for 0, "Error" otherwise
            (use "OOMKilled" for an out-of-memory kill).
        message: the terminated message (what a container writes to its termination log).
        containers: per-container overrides, by container name.

    When an init container has already exited non-zero (``run.init_exited``), the pod is
    Failed and its main containers stay waiting with reason PodInitializing, as on a real
    node with restartPolicy Never, whatever this outcome says.
    """

    exit_code: int = 0
    reason: str | None = None
    message: str | None = None
    containers: Mapping[str, Exited] = field(default_factory=dict)

    def for_container(self, name: str) -> Exited:
        """The outcome of one container."""
        return self.containers.get(name, self)

    def terminated_reason(self) -> str:
        """The reason a real kubelet would report for this exit."""
        if self.reason:
            return self.reason
        return "Completed" if self.exit_code == 0 else "Error"


@dataclass(frozen=True)
class Evicted:
    """The node evicted the pod: phase Failed, reason Evicted, containers killed (137)."""

    message: str = "The node was low on resource: memory. "


@dataclass(frozen=True)
class Hold:
    """Leave the pod as the behaviour left it until it is deleted (services, stuck pods)."""


PodOutcome = Exited | Evicted | Hold
Behaviour = Callable[["PodRun"], PodOutcome | None]

#: The Warning event a kubelet records when a container waits for these reasons.
_WAITING_EVENTS = {
    "ErrImagePull": "Failed",
    "ImagePullBackOff": "BackOff",
    "InvalidImageName": "InspectFailed",
    "CreateContainerConfigError": "Failed",
    "CreateContainerError": "Failed",
}


class PodGone(Exception):
    """The pod was deleted (or bound elsewhere) while a behaviour was driving it."""


# -- time formats the API server expects -------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _rfc3339(moment: datetime.datetime) -> str:
    """metav1.Time: second precision."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_micro(moment: datetime.datetime) -> str:
    """metav1.MicroTime (Lease renewTime): always six fractional digits."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rfc3339_nano(timestamp: float) -> str:
    """The prefix of a log line with ``timestamps=true``, like the kubelet's RFC3339Nano."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


# -- logs ---------------------------------------------------------------------------------------


class ContainerLog:
    """The in-memory log of one container: lines with their times, and whether it has ended."""

    def __init__(self) -> None:
        self._lines: list[tuple[float, str]] = []
        self._closed = False
        self._changed = threading.Condition()

    def append(self, *lines: str) -> None:
        """Adds lines (text with newlines is split into several lines)."""
        now = time.time()
        with self._changed:
            for line in lines:
                for part in line.split("\n"):
                    self._lines.append((now, part))
            self._changed.notify_all()

    def close(self) -> None:
        """Marks the container as ended, which ends every follower."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def lines(self) -> list[str]:
        """The text of every line so far."""
        with self._changed:
            return [text for _, text in self._lines]

    def read(self, start: int, timeout: float) -> tuple[list[tuple[float, str]], bool]:
        """Lines from index ``start`` (waiting up to ``timeout`` for some) and whether the log has ended."""
        with self._changed:
            if len(self._lines) <= start and not self._closed:
                self._changed.wait(timeout)
            return self._lines[start:], self._closed


# -- the pod handle behaviours drive ------------------------------------------------------------


@dataclass
class _ContainerState:
    name: str
    image: str
    container_id: str
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    ready: bool = False
    started: bool = False
    #: What the image reference resolved to when "pulled" (reported once not waiting).
    image_id: str = ""

    def as_status(self) -> JSON:
        status: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": "" if "waiting" in self.state else self.image_id,
            "ready": self.ready,
            "restartCount": 0,
            "started": self.started,
            "state": self.state,
            "lastState": {},
        }
        if "waiting" not in self.state:
            status["containerID"] = self.container_id
        return status

    @property
    def terminated(self) -> JSON | None:
        terminated: JSON | None = self.state.get("terminated")
        return terminated


class PodRun:
    """One pod as this kubelet runs it; the handle a behaviour drives (see the module docstring).

    Every method publishes the resulting pod status to the API server at once, so watchers
    see each step. Methods raise `PodGone` when the pod no longer exists.
    """

    def __init__(self, kubelet: SimulatedKubelet, pod: JSON, pod_ip: str) -> None:
        self.kubelet = kubelet
        self.pod = pod
        metadata = pod["metadata"]
        self.namespace: str = metadata["namespace"]
        self.name: str = metadata["name"]
        self.uid: str = metadata["uid"]
        #: Set when the pod is being deleted or the kubelet stops: behaviours must return.
        self.stop_requested = threading.Event()
        self.deletion_requested = False
        self._worker_done = False
        self._deletion_lock = threading.Lock()
        self.pod_ip = pod_ip
        spec = pod["spec"]
        self._bound = spec.get("nodeName") == kubelet.node_name
        self._unschedulable_message: str | None = None
        self._phase = "Pending"
        self._reason: str | None = None
        self._message: str | None = None
        self._start_time: str | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        self._lock = threading.RLock()
        self._deletion_confirmed = False
        self._init = {c["name"]: self._container_state(c) for c in spec.get("initContainers") or []}
        self._main = {c["name"]: self._container_state(c) for c in spec["containers"]}
        if self._init:
            for state in self._main.values():
                state.state = {"waiting": {"reason": "PodInitializing"}}
        self.logs: dict[str, ContainerLog] = {name: ContainerLog() for name in [*self._init, *self._main]}

    def _container_state(self, container: JSON) -> _ContainerState:
        digest = hashlib.sha256(f"{self.uid}/{container['name']}".encode()).hexdigest()
        image = container.get("image", "")
        return _ContainerState(
            container["name"], image, f"weft-sim://{digest}", image_id=self.kubelet.resolve_image(image)
        )

    # -- what behaviours read -----------------------------------------------------------------

    @property
    def containers(self) -> list[JSON]:
        """The pod's containers (spec.containers)."""
        containers: list[JSON] = self.pod["spec"]["containers"]
        return containers

    @property
    def init_containers(self) -> list[JSON]:
        """The pod's init containers (spec.initContainers), in the order they run."""
        containers: list[JSON] = self.pod["spec"].get("initContainers") or []
        return containers

    @property
    def container_names(self) -> list[str]:
        """Names of the main containers."""
        return list(self._main)

    @property
    def phase(self) -> str:
        """The phase last published."""
        return self._phase

    def sleep(self, seconds: float) -> bool:
        """Waits; returns False early if the pod is being deleted or the kubelet stops."""
        return not self.stop_requested.wait(seconds)

    # -- transitions --------------------------------------------------------------------------

    def bind(self) -> None:
        """Binds the pod to this node (what the scheduler would do). Idempotent."""
        with self._lock:
            if self._bound:
                return
            self.kubelet._bind(self)
            self._bound = True
            self._unschedulable_message = None
            self._start_time = _rfc3339(_now())
            self._publish()
            self.event(
                "Scheduled",
                f"Successfully assigned {self.namespace}/{self.name} to {self.kubelet.node_name}",
                component="default-scheduler",
            )

    def unschedulable(self, message: str = "0/1 nodes are available: 1 Insufficient cpu.") -> None:
        """Reports the pod unschedulable (PodScheduled False, reason Unschedulable); it is never bound."""
        with self._lock:
            if self._bound:
                raise RuntimeError(f"pod {self.namespace}/{self.name} is already bound")
            self._unschedulable_message = message
            self._publish()
            self.event("FailedScheduling", message, kind="Warning", component="default-scheduler")

    def waiting(self, container: str, reason: str, message: str = "") -> None:
        """Puts a container (main or init) in the waiting state, e.g. reason ImagePullBackOff."""
        with self._lock:
            self.bind()
            state = self._state_of(container)
            state.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
            state.ready = False
            state.started = False
            self._publish()
            if reason in _WAITING_EVENTS:
                self.event(_WAITING_EVENTS[reason], message or reason, kind="Warning", container=container)

    def init_running(self, name: str) -> None:
        """Marks an init container running."""
        with self._lock:
            self.bind()
            state = self._init[name]
            state.state = {"running": {"startedAt": _rfc3339(_now())}}
            state.started = True
            self._publish()
            self.event("Started", f"Started container {name}", container=name)

    def init_exited(self, name: str, exit_code: int = 0, reason: str | None = None, message: str | None = None) -> None:
        """Marks an init container terminated; a non-zero exit fails the pod when the behaviour returns."""
        with self._lock:
            self.bind()
            state = self._init[name]
            state.state = {"terminated": self._terminated(state, Exited(exit_code, reason, message))}
            state.started = False
            self.logs[name].close()
            self._publish()

    def start(self, ready: bool = True) -> None:
        """Completes init containers not yet run and starts every main container: phase Running."""
        with self._lock:
            self.bind()
            for name, state in self._init.items():
                if state.terminated is None:
                    state.state = {"terminated": self._terminated(state, Exited(0))}
                    self.logs[name].close()
            now = _rfc3339(_now())
            started = []
            for state in self._main.values():
                if "running" not in state.state:
                    state.state = {"running": {"startedAt": now}}
                    started.append(state.name)
                state.started = True
                state.ready = ready
            self._phase = "Running"
            self._publish()
            for name in started:
                self.event("Started", f"Started container {name}", container=name)

    def exited(self, container: str, exit_code: int = 0, reason: str | None = None, message: str | None = None) -> None:
        """Terminates one main container while the pod's others keep running (phase stays Running).

        A real node reports each container's end on its own: e.g. a step container killed as
        a whole (a cgroup OOM group kill) while a helper container of the pod still runs.
        `finish` later ends the containers still running and leaves this one as it is.
        """
        with self._lock:
            if self._phase != "Running":
                self.start()
            state = self._main[container]
            state.state = {"terminated": self._terminated(state, Exited(exit_code, reason, message))}
            state.ready = False
            state.started = False
            self.logs[container].close()
            self._publish()

    def set_ready(self, ready: bool = True, container: str | None = None) -> None:
        """Sets the readiness of one running container, or of all of them."""
        with self._lock:
            for state in self._main.values():
                if (container is None or state.name == container) and "running" in state.state:
                    state.ready = ready
            self._publish()

    def log(self, container: str, *lines: str) -> None:
        """Appends lines to a container's log (init or main)."""
        self.logs[container].append(*lines)

    def event(
        self,
        reason: str,
        message: str,
        *,
        kind: str = "Normal",
        container: str | None = None,
        component: str = "kubelet",
    ) -> None:
        """Records a core/v1 Event about the pod, as the kubelet or scheduler would.

        The transitions above already record the usual ones (Scheduled, FailedScheduling,
        Started, Failed/BackOff for image pulls, Evicted). Best effort, like a real kubelet:
        an event that cannot be written is dropped.
        """
        self.kubelet._record_event(self, reason, message, kind, container, component)

    # -- endings ---------------------------------------------------------------------------------

    def finish(self, outcome: PodOutcome) -> None:
        """Ends the pod with ``outcome`` now, from any thread.

        The kubelet calls it with what the behaviour returned; a test may call it itself on a
        pod whose behaviour returned ``Hold()`` (see `SimulatedKubelet.run_of`) to decide
        from outside when and how the pod ends.
        """
        with self._lock:
            if isinstance(outcome, Hold):
                return
            failed_init = any((s.terminated or {}).get("exitCode", 0) != 0 for s in self._init.values())
            if isinstance(outcome, Evicted):
                self.bind()
                killed = Exited(137, "Error")
                for state in self._main.values():
                    if "running" in state.state:
                        state.state = {"terminated": self._terminated(state, killed)}
                    state.ready = False
                    state.started = False
                self._phase, self._reason, self._message = "Failed", "Evicted", outcome.message
                self.event("Evicted", outcome.message, kind="Warning")
            elif failed_init:
                self._phase = "Failed"
            else:
                if self._phase != "Running":
                    self.start(ready=False)
                for state in self._main.values():
                    if state.terminated is None:
                        state.state = {"terminated": self._terminated(state, outcome.for_container(state.name))}
                    state.ready = False
                    state.started = False
                codes = [(s.terminated or {}).get("exitCode", 0) for s in self._main.values()]
                self._phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
            for container_log in self.logs.values():
                container_log.close()
            self._publish()

    def _terminated(self, state: _ContainerState, exited: Exited) -> JSON:
        running = state.state.get("running") or {}
        now = _rfc3339(_now())
        terminated: JSON = {
            "exitCode": exited.exit_code,
            "reason": exited.terminated_reason(),
            "startedAt": running.get("startedAt", now),
            "finishedAt": now,
            "containerID": state.container_id,
        }
        if exited.message:
            terminated["message"] = exited.message
        return terminated

    def _state_of(self, container: str) -> _ContainerState:
        if container in self._main:
            return self._main[container]
        if container in self._init:
            return self._init[container]
        raise KeyError(f"pod {self.namespace}/{self.name} has no container {container!r}")

    # -- status ---------------------------------------------------------------------------------

    def _condition(self, kind: str, status: str, reason: str | None = None, message: str | None = None) -> JSON:
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != status:
            previous = (status, _rfc3339(_now()))
            self._transitions[kind] = previous
        condition: JSON = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": previous[1]}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        return condition

    def _status(self) -> JSON:
        if not self._bound:
            conditions = []
            if self._unschedulable_message is not None:
                conditions.append(
                    self._condition("PodScheduled", "False", "Unschedulable", self._unschedulable_message)
                )
            return {"phase": "Pending", "conditions": conditions}
        incomplete = [s.name for s in self._init.values() if (s.terminated or {}).get("exitCode", 1) != 0]
        unready = [s.name for s in self._main.values() if not s.ready]
        terminal = self._phase in ("Succeeded", "Failed")
        if incomplete:
            initialized = self._condition(
                "Initialized", "False", "ContainersNotInitialized", f"containers with incomplete status: {incomplete}"
            )
        else:
            initialized = self._condition("Initialized", "True")
        if terminal:
            ready = self._condition("Ready", "False", "PodCompleted")
            containers_ready = self._condition("ContainersReady", "False", "PodCompleted")
        elif unready:
            message = f"containers with unready status: [{' '.join(unready)}]"
            ready = self._condition("Ready", "False", "ContainersNotReady", message)
            containers_ready = self._condition("ContainersReady", "False", "ContainersNotReady", message)
        else:
            ready = self._condition("Ready", "True")
            containers_ready = self._condition("ContainersReady", "True")
        status: JSON = {
            "phase": self._phase,
            "conditions": [initialized, ready, containers_ready, self._condition("PodScheduled", "True")],
            "hostIP": "127.0.0.1",
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self._start_time or _rfc3339(_now()),
            "containerStatuses": [s.as_status() for s in self._main.values()],
        }
        if self._init:
            status["initContainerStatuses"] = [s.as_status() for s in self._init.values()]
        if self._reason:
            status["reason"] = self._reason
            status["message"] = self._message
        return status

    def _publish(self) -> None:
        self.kubelet._patch_pod_status(self, self._status())

    def _log_refusal(self, container: str) -> str | None:
        """Why the kubelet would refuse to serve this container's log now, if it would."""
        with self._lock:
            try:
                state = self._state_of(container)
            except KeyError:
                return f"container {container} is not valid for pod {self.name}"
            waiting = state.state.get("waiting")
            if waiting and not self.logs[container].lines():
                return f'container "{container}" in pod "{self.name}" is waiting to start: {waiting.get("reason")}'
            return None


# -- ready-made behaviours ----------------------------------------------------------------------


def _lines_for(logs: Sequence[str] | Mapping[str, Sequence[str]], container: str) -> Sequence[str]:
    if isinstance(logs, Mapping):
        return logs.get(container, ())
    return logs


def complete(
    exit_code: int = 0,
    *,
    after: float = 0.0,
    logs: Sequence[str] | Mapping[str, Sequence[str]] = (),
    reason: str | None = None,
    message: str | None = None,
    until: threading.Event | None = None,
) -> Behaviour:
    """Starts the containers, writes ``logs`` (to every container, or per container name),
    runs for ``after`` seconds (or until ``until`` is set), then exits with ``exit_code``."""

    def behaviour(run: PodRun) -> PodOutcome:
        run.start()
        for container in run.container_names:
            lines = _lines_for(logs, container)
            if lines:
                run.log(container, *lines)
        if until is not None:
            while not until.wait(0.05):
                if run.stop_requested.is_set():
                    return Hold()
        if not run.sleep(after):
            return Hold()
        return Exited(exit_code, reason, message)

    return behaviour


def succeed(
    after: float = 0.0, logs: Sequence[str] | Mapping[str, Sequence[str]] = (), until: threading.Event | None = None
) -> Behaviour:
    """Runs for ``after`` seconds (or until ``until`` is set) and exits 0: phase Succeeded."""
    return complete(0, after=after, logs=logs, until=until)


def fail(
    exit_code: int = 1,
    *,
    after: float = 0.0,
    logs: Sequence[str] | Mapping[str, Sequence[str]] = (),
    message: str | None = None,
    until: threading.Event | None = None,
) -> Behaviour:
    """Runs, writes ``logs`` and exits with ``exit_code`` (reason Error): phase Failed."""
    return complete(exit_code, after=after, logs=logs, message=message, until=until)


def oom_killed(after: float = 0.0, logs: Sequence[str] | Mapping[str, Sequence[str]] = ()) -> Behaviour:
    """Runs, then is killed for memory: exit code 137, reason OOMKilled, phase Failed."""
    return complete(137, after=after, logs=logs, reason="OOMKilled")


def evicted(after: float = 0.0, message: str = Evicted.message) -> Behaviour:
    """Runs, then is evicted: phase Failed, reason Evicted."""

    def behaviour(run: PodRun) -> PodOutcome:
        run.start()
        if not run.sleep(after):
            return Hold()
        return Evicted(message)

    return behaviour


def image_pull_failure(backoff_after: float | None = 0.5, message: str | None = None) -> Behaviour:
    """Binds the pod and never starts it: ErrImagePull, then ImagePullBackOff after ``backoff_after`` s.

    With ``backoff_after=None`` the containers stay in ErrImagePull. The pod stays Pending
    until deleted, as on a node that cannot pull the image.
    """

    def behaviour(run: PodRun) -> PodOutcome:
        run.bind()
        for container in run.containers:
            image = container.get("image", "")
            pull_error = message or f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}"'
            run.waiting(container["name"], "ErrImagePull", pull_error)
        if backoff_after is not None and run.sleep(backoff_after):
            for container in run.containers:
                image = container.get("image", "")
                run.waiting(container["name"], "ImagePullBackOff", f'Back-off pulling image "{image}"')
        return Hold()

    return behaviour


def unschedulable(message: str = "0/1 nodes are available: 1 Insufficient cpu.") -> Behaviour:
    """Never binds the pod; reports PodScheduled False with reason Unschedulable."""

    def behaviour(run: PodRun) -> PodOutcome:
        run.unschedulable(message)
        return Hold()

    return behaviour


def keep_running(ready: bool = True, logs: Sequence[str] | Mapping[str, Sequence[str]] = ()) -> Behaviour:
    """Starts the containers (Ready when ``ready``) and keeps them running until the pod is deleted."""

    def behaviour(run: PodRun) -> PodOutcome:
        run.start(ready=ready)
        for container in run.container_names:
            lines = _lines_for(logs, container)
            if lines:
                run.log(container, *lines)
        return Hold()

    return behaviour


def by_name(routes: Mapping[str, Behaviour], default: Behaviour) -> Behaviour:
    """Chooses a behaviour by glob on ``namespace/name`` (first match in order), else ``default``.

    Example: ``by_name({"*/fail-*": fail(3), "jobs/*": succeed(1.0)}, default=keep_running())``.
    """

    def behaviour(run: PodRun) -> PodOutcome | None:
        key = f"{run.namespace}/{run.name}"
        for pattern, chosen in routes.items():
            if fnmatch.fnmatchcase(key, pattern):
                return chosen(run)
        return default(run)

    return behaviour


@dataclass(frozen=True)
class LocalProcess:
    """How `run_locally` will start one container: what ``prepare`` may rewrite."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None


_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables are replaced, ``$$`` escapes, others stay."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REFERENCE.sub(substitute, text)


def _field_value(run: PodRun, path: str) -> str:
    pod = run.pod
    metadata = pod["metadata"]
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    if path in ("status.podIP", "status.podIPs"):
        return run.pod_ip
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ValueError(f"fieldRef {path!r} is not supported by the simulated kubelet")


def _container_env(run: PodRun, container: JSON) -> dict[str, str]:
    """The environment Kubernetes would give the container (envFrom first, then env in order)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = run.kubelet._read_config_map(run.namespace, source["configMapRef"]["name"])
        else:
            data = run.kubelet._read_secret(run.namespace, source["secretRef"]["name"])
        env.update({prefix + key: value for key, value in data.items()})
    for variable in container.get("env") or []:
        name = variable["name"]
        if "value" in variable or "valueFrom" not in variable:
            env[name] = _expand(variable.get("value", ""), env)
            continue
        source = variable["valueFrom"]
        if "fieldRef" in source:
            env[name] = _field_value(run, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = run.kubelet._read_secret(run.namespace, ref["name"])[ref["key"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = run.kubelet._read_config_map(run.namespace, ref["name"])[ref["key"]]
        elif "resourceFieldRef" in source:
            resources = container.get("resources") or {}
            resource = source["resourceFieldRef"]["resource"]
            kind, _, key = resource.partition(".")
            env[name] = str((resources.get(kind) or {}).get(key, "0"))
    return env


def run_locally(
    *,
    prepare: Callable[[PodRun, JSON, LocalProcess], LocalProcess] | None = None,
    inherit_env: bool = True,
    kill_grace: float = 2.0,
) -> Behaviour:
    """Runs every container's ``command + args`` as a local subprocess (see the module docstring).

    Args:
        prepare: called with (run, container spec, the process as derived from the spec); its
            result is what runs. Use it to map image paths and volumes onto the test machine,
            add variables, or replace the argv of a container that relies on its image's
            entrypoint (a container with no ``command`` and no ``prepare`` fails with exit 127).
        inherit_env: start from the test process's environment (for PATH, the virtualenv...);
            the pod's variables win. When False only PATH is inherited.
        kill_grace: seconds between SIGTERM and SIGKILL when the pod is deleted.
    """

    def run_container(run: PodRun, container: JSON) -> Exited | None:
        """Runs one container to its end; None when it did not end (stopped, or stuck waiting)."""
        from kubernetes.client.exceptions import ApiException

        name = container["name"]
        try:
            pod_env = _container_env(run, container)
        except (KeyError, ValueError, ApiException) as error:
            # As a real kubelet: a missing secret/config map leaves the container waiting.
            run.waiting(name, "CreateContainerConfigError", f"simulated kubelet: {error}")
            run.stop_requested.wait()
            return None
        argv = [_expand(part, pod_env) for part in [*container.get("command", []), *container.get("args", [])]]
        base = dict(os.environ) if inherit_env else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        working_dir = container.get("workingDir")
        process = LocalProcess(
            argv=argv,
            env={**base, **pod_env},
            cwd=working_dir if working_dir and Path(working_dir).is_dir() else None,
        )
        if prepare is not None:
            process = prepare(run, container, process)
        if not process.argv:
            message = f"container {name!r} has no command; the simulated kubelet cannot run its image's entrypoint"
            run.log(name, message)
            return Exited(127, "ContainerCannotRun", message)
        try:
            child = subprocess.Popen(
                list(process.argv),
                env=dict(process.env),
                cwd=process.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            run.log(name, f"exec {process.argv[0]}: {error}")
            return Exited(127, "ContainerCannotRun", str(error))
        assert child.stdout is not None
        stdout = child.stdout

        def pump() -> None:
            with stdout:
                for raw in iter(stdout.readline, b""):
                    run.log(name, raw.decode("utf-8", "replace").rstrip("\n"))

        def signal_container(signum: int) -> None:
            # The child leads its own process group (start_new_session): signal all of it,
            # as a runtime tearing down a container's PID namespace would.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

        pumper = threading.Thread(target=pump, name=f"log-{run.name}-{name}", daemon=True)
        pumper.start()
        stopped = False
        while child.poll() is None:
            if run.stop_requested.wait(0.05):
                stopped = True
                signal_container(signal.SIGTERM)
                try:
                    child.wait(kill_grace)
                except subprocess.TimeoutExpired:
                    signal_container(signal.SIGKILL)
                    child.wait()
                break
        # Leftover children would keep the log pipe open; a container's end is their end too.
        signal_container(signal.SIGKILL)
        pumper.join(5)
        if stopped:
            return None
        code = child.returncode
        return Exited(128 - code if code < 0 else code)

    def behaviour(run: PodRun) -> PodOutcome:
        run.bind()
        for container in run.init_containers:
            run.init_running(container["name"])
            exited = run_container(run, container)
            if exited is None:
                return Hold()
            run.init_exited(container["name"], exited.exit_code, exited.reason, exited.message)
            if exited.exit_code != 0:
                return Exited(exited.exit_code)
        run.start()
        results: dict[str, Exited | None] = {}

        def run_one(container: JSON) -> None:
            try:
                results[container["name"]] = run_container(run, container)
            except Exception as error:  # reported as the container's failure, not lost in a thread
                run.log(container["name"], f"simulated kubelet: {error!r}")
                results[container["name"]] = Exited(128, "ContainerCannotRun", repr(error))

        threads = [threading.Thread(target=run_one, args=(c,), daemon=True) for c in run.containers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if any(result is None for result in results.values()):
            return Hold()
        return Exited(containers={name: result for name, result in results.items() if result is not None})

    return behaviour


# -- the kubelet --------------------------------------------------------------------------------


class _LogServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    kubelet: SimulatedKubelet

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A follower that hangs up mid-stream is normal; anything else is worth a test failure.
        error = traceback.format_exc()
        if "BrokenPipeError" in error or "ConnectionResetError" in error or "SSLEOFError" in error:
            return
        self.kubelet._record_error(f"log server: {error}")


class _LogHandler(http.server.BaseHTTPRequestHandler):
    server: _LogServer
    # HTTP/1.0: the end of a followed log is the end of the connection, no chunking needed.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("log server: " + format, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["healthz"]:
            self._reply(200, b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"not found")
            return
        _, namespace, pod, container = (urllib.parse.unquote(p) for p in parts)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        kubelet = self.server.kubelet
        run = kubelet._run_by_name(namespace, pod)
        if run is None:
            self._reply(404, f'pod "{pod}" not found in namespace "{namespace}"'.encode())
            return
        if query.get("previous") in ("true", "1"):
            self._reply(400, f'previous terminated container "{container}" in pod "{pod}" not found'.encode())
            return
        refusal = run._log_refusal(container)
        if refusal:
            self._reply(400, refusal.encode())
            return
        self._stream(kubelet, run.logs[container], query)

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, kubelet: SimulatedKubelet, container_log: ContainerLog, query: Mapping[str, str]) -> None:
        follow = query.get("follow") in ("true", "1")
        timestamps = query.get("timestamps") in ("true", "1")
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        since: float | None = None
        if "sinceSeconds" in query:
            since = time.time() - int(query["sinceSeconds"])
        elif "sinceTime" in query:
            since = datetime.datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00")).timestamp()
        lines, closed = container_log.read(0, 0)
        position = len(lines)
        if since is not None:
            lines = [line for line in lines if line[0] >= since]
        if "tailLines" in query:
            tail = int(query["tailLines"])
            lines = lines[-tail:] if tail > 0 else []
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        sent = 0
        while True:
            for stamp, text in lines:
                data = ((_rfc3339_nano(stamp) + " ") if timestamps else "") + text + "\n"
                encoded = data.encode()
                if limit is not None and sent + len(encoded) > limit:
                    self.wfile.write(encoded[: limit - sent])
                    return
                self.wfile.write(encoded)
                sent += len(encoded)
            if not follow or closed or kubelet._stopping.is_set():
                return
            lines, closed = container_log.read(position, 0.5)
            position += len(lines)


class SimulatedKubelet:
    """One simulated node; see the module docstring for what it does and does not do.

    Args:
        api_client: an official-client ApiClient with rights to nodes, pods, bindings, leases.
        tls_cert / tls_key: PEM files for the HTTPS log endpoint (the apiserver connects to it
            without verifying, as it does to real kubelets unless told otherwise).
        behaviour: what pods do; may be replaced at any time (``kubelet.behaviour = ...``);
            pods already running keep the behaviour they started with.
        node_name: the Node's name.
        heartbeat_interval: seconds between Lease renewals and node status updates.
        bind_unscheduled: take pods that no node has yet (acting as the scheduler). A second
            kubelet in the same cluster should pass False and only run pods bound to it.
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        tls_cert: Path,
        tls_key: Path,
        behaviour: Behaviour | None = None,
        node_name: str = "weft-sim-node",
        heartbeat_interval: float = 10.0,
        bind_unscheduled: bool = True,
    ) -> None:
        self.api_client = api_client
        self.node_name = node_name
        self.behaviour: Behaviour = behaviour or succeed()
        self.heartbeat_interval = heartbeat_interval
        self.bind_unscheduled = bind_unscheduled
        #: Unexpected errors from the kubelet's threads (tracebacks); a healthy run has none.
        self.errors: list[str] = []
        #: The digest each image reference "pulls" as (`sha256:…`); a test moves a tag by
        #: changing it. Unlisted references resolve to a digest of their own text.
        self.image_digests: dict[str, str] = {}
        self._tls_cert = tls_cert
        self._tls_key = tls_key
        self._stopping = threading.Event()
        self._runs: dict[str, PodRun] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._by_name: dict[tuple[str, str], PodRun] = {}
        self._lock = threading.Lock()
        self._ip_numbers = itertools.count(2)
        self._server: _LogServer | None = None
        self._threads: list[threading.Thread] = []
        self._watch_response: Any = None
        self._listed = threading.Event()
        self._node_registered_at = _rfc3339(_now())
        self.port = 0

    def resolve_image(self, reference: str) -> str:
        """The container `imageID` a pull of `reference` reports: `repo@sha256:…`, as a
        container runtime reports the repo digest it pulled."""
        name, at, pinned = reference.partition("@")
        if at:
            return f"{name.rsplit(':', 1)[0] if ':' in name.rsplit('/', 1)[-1] else name}@{pinned}"
        repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
        digest = self.image_digests.get(reference) or "sha256:" + hashlib.sha256(reference.encode()).hexdigest()
        return f"{repo}@{digest}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SimulatedKubelet:
        """Serves logs, registers the Node, starts heartbeats and the pod watch; returns self."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self._tls_cert), str(self._tls_key))
        server = _LogServer(("127.0.0.1", 0), _LogHandler)
        server.kubelet = self
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = int(server.server_address[1])
        self._spawn("log-server", server.serve_forever)
        try:
            self._register_node()
        except BaseException:
            self.stop()
            raise
        self._spawn("heartbeat", self._heartbeat_loop)
        self._spawn("pod-watch", self._watch_loop)
        if not self._listed.wait(timeout):
            self.stop()
            raise RuntimeError(f"simulated kubelet could not list pods within {timeout}s: {self.errors}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops everything; pods stay as they are in the API. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        response = self._watch_response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
        with self._lock:
            runs = list(self._runs.values())
            workers = list(self._workers.values())
        for run in runs:
            run.stop_requested.set()
            for container_log in run.logs.values():
                container_log.close()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> SimulatedKubelet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what tests read ----------------------------------------------------------------------

    def container_log(self, namespace: str, pod: str, container: str) -> list[str]:
        """The lines a container has logged so far (the current pod of that name)."""
        run = self._run_by_name(namespace, pod)
        if run is None:
            raise KeyError(f"no pod {namespace}/{pod} on node {self.node_name}")
        return run.logs[container].lines()

    def run_of(self, namespace: str, pod: str) -> PodRun | None:
        """The PodRun of the current pod of that name on this node, if any."""
        return self._run_by_name(namespace, pod)

    # -- threads ------------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                if not self._stopping.is_set():
                    self._record_error(f"{name}: {traceback.format_exc()}")

        thread = threading.Thread(target=guarded, name=f"kubelet-{self.node_name}-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _record_error(self, error: str) -> None:
        _log.error("simulated kubelet %s: %s", self.node_name, error)
        self.errors.append(error)

    # -- REST -----------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, Any]] | None = None,
        content_type: str = "application/json",
        stream: bool = False,
        timeout: float | tuple[float, float] = 15.0,
    ) -> Any:
        """One API request with the client's auth and TLS; JSON in, JSON (or a raw stream) out.

        Raw JSON rather than generated models: the kubelet writes fields exactly as a kubelet
        does (MicroTime, daemonEndpoints.kubeletEndpoint.Port) and reads the pods it is given
        in the wire form that behaviours see.
        """
        from kubernetes.client.exceptions import ApiException

        serialized = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query or []),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response: Any = self.api_client.call_api(*serialized, _request_timeout=timeout)
        if stream and 200 <= response.status <= 299:
            return response.response
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=response, body=response.data.decode("utf-8", "replace"), data=None
            )
        return json.loads(response.data) if response.data else None

    # -- node -----------------------------------------------------------------------------------

    def _node_conditions(self) -> list[JSON]:
        heartbeat = _rfc3339(_now())
        since = self._node_registered_at

        def condition(kind: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": since,
            }

        return [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "simulated kubelet is posting ready status"),
        ]

    def _node_status(self) -> JSON:
        resources = {"cpu": "32", "memory": "128Gi", "pods": "1000", "ephemeral-storage": "200Gi"}
        return {
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "capacity": resources,
            "allocatable": resources,
            "conditions": self._node_conditions(),
            "nodeInfo": {
                "machineID": hashlib.md5(self.node_name.encode(), usedforsecurity=False).hexdigest(),
                "systemUUID": self.node_name,
                "bootID": hashlib.md5(self._node_registered_at.encode(), usedforsecurity=False).hexdigest(),
                "kernelVersion": os.uname().release,
                "osImage": "weft simulated node",
                "containerRuntimeVersion": "weft-sim://1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        from kubernetes.client.exceptions import ApiException

        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "status": self._node_status(),
        }
        try:
            self._request("POST", "/api/v1/nodes", body=node)
        except ApiException as error:
            if error.status != 409:
                raise
        # A re-registered node must advertise this kubelet's new port.
        self._request(
            "PATCH",
            f"/api/v1/nodes/{self.node_name}/status",
            body={"status": self._node_status()},
            content_type="application/merge-patch+json",
        )
        self._renew_lease()

    def _renew_lease(self) -> None:
        from kubernetes.client.exceptions import ApiException

        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        renew = _rfc3339_micro(_now())
        try:
            self._request(
                "PATCH",
                path,
                body={"spec": {"holderIdentity": self.node_name, "renewTime": renew}},
                content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status != 404:
                raise
            node = self._request("GET", f"/api/v1/nodes/{self.node_name}")
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": "kube-node-lease",
                    # As a real kubelet does, so the lease goes away with the node.
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"]}
                    ],
                },
                "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": renew},
            }
            self._request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body=lease)

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat_interval):
            try:
                self._renew_lease()
                self._request(
                    "PATCH",
                    f"/api/v1/nodes/{self.node_name}/status",
                    body={"status": {"conditions": self._node_conditions()}},
                    content_type="application/merge-patch+json",
                )
            except Exception:
                # One missed beat is survivable (the grace period is 40 s); keep beating.
                if not self._stopping.is_set():
                    self._record_error(f"heartbeat: {traceback.format_exc()}")

    # -- pods -----------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listing = self._request("GET", "/api/v1/pods")
                    for pod in listing["items"]:
                        self._on_pod("ADDED", pod)
                    version = listing["metadata"]["resourceVersion"]
                    self._listed.set()
                version = self._follow_watch(version)
            except ApiException as error:
                if self._stopping.is_set():
                    return
                if error.status == 410:
                    version = None
                    continue
                self._record_error(f"pod watch: {error}")
                self._stopping.wait(0.5)
            except Exception:
                if self._stopping.is_set():
                    return
                # Connection dropped (apiserver restart, timeout): resume from `version`.
                _log.debug("pod watch interrupted", exc_info=True)
                self._stopping.wait(0.2)

    def _follow_watch(self, version: str) -> str | None:
        """Follows one watch request; returns the version to resume from (None: re-list)."""
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", _WATCH_TIMEOUT_SECONDS),
        ]
        response = self._request(
            "GET", "/api/v1/pods", query=query, stream=True, timeout=(10, _WATCH_TIMEOUT_SECONDS + 30)
        )
        self._watch_response = response
        try:
            if self._stopping.is_set():
                return version
            for line in response:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch error: {obj}")
                version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._on_pod(kind, obj)
            return version
        finally:
            self._watch_response = None
            # close, not release: a half-read stream must not go back into the pool.
            response.close()

    def _on_pod(self, kind: str, pod: JSON) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        uid = metadata["uid"]
        with self._lock:
            run = self._runs.get(uid)
        if kind == "DELETED":
            if run is not None:
                run.deletion_requested = True
                run.stop_requested.set()
                self._forget(run)
            return
        node = spec.get("nodeName") or ""
        if node not in ("", self.node_name):
            if run is not None:  # we lost a binding race to another kubelet
                run.stop_requested.set()
                self._forget(run)
            return
        if run is not None:
            run.pod = pod
        if metadata.get("deletionTimestamp"):
            self._on_deletion(run, pod)
            return
        if run is not None or self._stopping.is_set():
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # finished before this kubelet started; nothing left to run
        if node == "" and not self.bind_unscheduled:
            return
        octet = next(self._ip_numbers)
        run = PodRun(self, pod, f"10.244.{octet // 256 % 256}.{octet % 256}")
        worker = threading.Thread(target=self._drive, args=(run,), name=f"pod-{run.namespace}-{run.name}", daemon=True)
        with self._lock:
            self._runs[uid] = run
            self._workers[uid] = worker
            self._by_name[(run.namespace, run.name)] = run
        worker.start()

    def _on_deletion(self, run: PodRun | None, pod: JSON) -> None:
        if run is None:
            # Bound here but never run by this kubelet (e.g. it restarted): just confirm.
            if pod["spec"].get("nodeName") == self.node_name:
                self._confirm_deletion(pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"])
            return
        # Whichever of this thread and the pod's worker sees both "deletion requested" and
        # "worker done" confirms; the lock makes sure at least one of them does.
        with run._deletion_lock:
            run.deletion_requested = True
            worker_done = run._worker_done
        run.stop_requested.set()
        if worker_done:
            self._finish_deletion(run)

    def _drive(self, run: PodRun) -> None:
        """A pod's worker: the behaviour, then its outcome, then deletion if one was asked for."""
        try:
            outcome = self.behaviour(run)
            if outcome is None:
                outcome = Hold()
            if not run.stop_requested.is_set():
                run.finish(outcome)
            if isinstance(outcome, Hold):
                run.stop_requested.wait()
        except PodGone:
            pass
        except Exception:
            if not run.stop_requested.is_set():
                self._record_error(f"pod {run.namespace}/{run.name}: {traceback.format_exc()}")
        finally:
            for container_log in run.logs.values():
                container_log.close()
            with run._deletion_lock:
                run._worker_done = True
                deleting = run.deletion_requested
            if deleting and not self._stopping.is_set():
                self._finish_deletion(run)

    def _finish_deletion(self, run: PodRun) -> None:
        with run._deletion_lock:
            if run._deletion_confirmed:
                return
            run._deletion_confirmed = True
        if run._bound:
            self._confirm_deletion(run.namespace, run.name, run.uid)
        self._forget(run)

    def _confirm_deletion(self, namespace: str, name: str, uid: str) -> None:
        """Deletes with grace 0, as a kubelet does once the containers are gone."""
        from kubernetes.client.exceptions import ApiException

        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=options)
        except ApiException as error:
            # 404: already gone; 409: the name now belongs to a newer pod (uid precondition).
            if error.status not in (404, 409):
                self._record_error(f"confirming deletion of {namespace}/{name}: {error}")

    def _forget(self, run: PodRun) -> None:
        with self._lock:
            self._runs.pop(run.uid, None)
            self._workers.pop(run.uid, None)
            if self._by_name.get((run.namespace, run.name)) is run:
                del self._by_name[(run.namespace, run.name)]

    def _run_by_name(self, namespace: str, name: str) -> PodRun | None:
        with self._lock:
            return self._by_name.get((namespace, name))

    def _bind(self, run: PodRun) -> None:
        from kubernetes.client.exceptions import ApiException

        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": run.name, "namespace": run.namespace, "uid": run.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self._request("POST", f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/binding", body=binding)
        except ApiException as error:
            if error.status in (404, 409):
                # 404: deleted before it was bound; 409: another kubelet bound it first.
                run.stop_requested.set()
                raise PodGone(f"{run.namespace}/{run.name}: {error.reason}") from error
            raise

    def _patch_pod_status(self, run: PodRun, status: JSON) -> None:
        from kubernetes.client.exceptions import ApiException

        # A merge patch replaces the lists (conditions, containerStatuses) whole, which is what
        # a kubelet means: it owns them. The uid guard stops a stale worker from writing to a
        # newer pod that reuses the name.
        body = {"metadata": {"uid": run.uid}, "status": status}
        try:
            self._request(
                "PATCH",
                f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
                body=body,
                content_type="application/merge-patch+json",
            )
        except ApiException as error:
            # 404: deleted; 422 on metadata.uid ("field is immutable"): the name now belongs to
            # a newer pod, so this one is gone as far as its worker is concerned.
            stale = error.status == 422 and "metadata.uid" in (error.body or "")
            if error.status == 404 or stale:
                run.stop_requested.set()
                raise PodGone(f"{run.namespace}/{run.name}: {error.reason}") from error
            raise

    def _record_event(
        self, run: PodRun, reason: str, message: str, kind: str, container: str | None, component: str
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        involved: JSON = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": run.namespace,
            "name": run.name,
            "uid": run.uid,
        }
        if container is not None:
            field_path = "spec.initContainers" if container in run._init else "spec.containers"
            involved["fieldPath"] = f"{field_path}{{{container}}}"
        now = _rfc3339(_now())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{run.name}.", "namespace": run.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": component, **({"host": self.node_name} if component == "kubelet" else {})},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._request("POST", f"/api/v1/namespaces/{run.namespace}/events", body=event)
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            # A namespace being deleted refuses new events, an API server restarting refuses
            # connections; a kubelet drops them too.
            _log.debug("event %s for %s/%s dropped: %s", reason, run.namespace, run.name, error)

    def _read_secret(self, namespace: str, name: str) -> dict[str, str]:
        secret = self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        data = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        return data

    def _read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        config_map = self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return dict(config_map.get("data") or {})


def start_kubelet(
    cluster: KubeCluster,
    behaviour: Behaviour | None = None,
    *,
    node_name: str = "weft-sim-node",
    heartbeat_interval: float = 10.0,
    bind_unscheduled: bool = True,
) -> SimulatedKubelet:
    """Starts a simulated kubelet for ``cluster`` (its own ApiClient, the cluster's serving cert).

    The result is a context manager; ``with start_kubelet(cluster, succeed()) as kubelet:``.
    """
    kubelet = _OwningKubelet(
        cluster.api_client(),
        tls_cert=cluster.tls_cert_path,
        tls_key=cluster.tls_key_path,
        behaviour=behaviour,
        node_name=node_name,
        heartbeat_interval=heartbeat_interval,
        bind_unscheduled=bind_unscheduled,
    )
    return kubelet.start()


class _OwningKubelet(SimulatedKubelet):
    """A kubelet that owns its ApiClient and closes it when stopped."""

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        client: Any = self.api_client
        client.close()
