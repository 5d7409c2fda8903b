"""What a step pod looks like, and how to read one: pure functions over pod JSON.

`build_pod` turns an `AttemptSpec` into the pod manifest the Kubernetes runtime creates
(see `weft_executor.runtime.kubernetes` for the data handover it implements), `pod_name`
names it deterministically, and `read_pod` condenses a pod's status into the few facts the
runtime decides on. Pods are handled as the API's JSON (camelCase dicts), not as the
client's generated models: the watch stream, the in-test API stub and the manifests all
speak JSON, and deserialising thousands of pods into models costs more than it gives.

Nothing here talks to the API server, reads a secret value or depends on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from weft.v1 import pipeline_pb2
from weft_executor import podio
from weft_executor.config import ExecutorConfig
from weft_executor.runtime import AttemptSpec

JSON = dict[str, Any]

#: Label every weft step pod carries; the runtime's single watch selects on it.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "weft"
POD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
LABEL_NAMESPACE = "weft.dev/namespace"
LABEL_RUN = "weft.dev/run"
LABEL_STEP = "weft.dev/step"
LABEL_ATTEMPT = "weft.dev/attempt"
#: The replica of a redundant step a pod runs (absent for other pods).
LABEL_REPLICA = "weft.dev/replica"
#: The step's DNA (`sha256:<hex>`; too long for a label value).
ANNOTATION_DNA = "weft.dev/dna"
#: The exact (namespace, run, step, attempt), since labels are sanitised and names hashed.
ANNOTATION_ATTEMPT_KEY = "weft.dev/attempt-key"

#: Container names inside a step pod.
MAIN_CONTAINER = "main"
FETCH_CONTAINER = "weft-inputs"
UPLOAD_CONTAINER = "weft-outputs"
SHARED_VOLUME = "weft"

#: Requests of weft's own containers: small, so they barely change where a step fits.
HELPER_RESOURCES = {"requests": {"cpu": "10m", "memory": "64Mi"}}
#: Seconds Kubernetes adds to a step's timeout before it kills the pod itself (a backstop for
#: when no executor is watching; the executor enforces the exact timeout).
DEADLINE_BACKSTOP_SECONDS = 60

_MAX_NAME = 63
_HASH_CHARS = 10
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

#: Container waiting reasons that mean the image cannot be pulled (failed after a grace period).
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
#: Waiting reasons that mean the container cannot be configured (missing secret/config map).
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
#: Waiting reasons that will never resolve by waiting.
HOPELESS_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
#: Pod phases after which no container of the pod runs any more.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


# Names and labels -------------------------------------------------------------------------


def _dns_label(text: str) -> str:
    """Lower-case letters, digits and single '-' only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower()))


def attempt_key_hash(namespace: str, run: str, step: str, attempt: int) -> str:
    """A short hash of the full attempt key, so names stay unique after truncation."""
    key = "\0".join((namespace, run, step, str(attempt)))
    return hashlib.sha256(key.encode()).hexdigest()[:_HASH_CHARS]


def pod_name(namespace: str, run: str, step: str, attempt: int) -> str:
    """The pod of an attempt: `<run>-<step>-<attempt>-<hash>`, a DNS-1123 label of ≤ 63 chars.

    The readable part may be cut short and lose characters Kubernetes does not allow; the
    hash of the exact (namespace, run, step, attempt) keeps two attempts from ever sharing
    a name (40 bits: a collision needs about a million attempts in one Kubernetes namespace
    at once, and is then detected by the attempt-key annotation, not silently adopted).
    """
    suffix = attempt_key_hash(namespace, run, step, attempt)
    room = _MAX_NAME - len(suffix) - 1
    step_part = _dns_label(step).strip("-")[:28].strip("-")
    attempt_part = str(attempt)
    run_room = max(0, room - len(step_part) - len(attempt_part) - 2)
    run_part = _dns_label(run).strip("-")[:run_room].strip("-")
    readable = "-".join(part for part in (run_part, step_part, attempt_part) if part)
    return f"{readable[:room].strip('-')}-{suffix}".lstrip("-")


def label_value(text: str) -> str:
    """`text` as a valid label value (≤ 63 chars of [-A-Za-z0-9_.], alphanumeric at both ends)."""
    value = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:_MAX_NAME]
    value = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
    assert _LABEL_VALUE.match(value)
    return value


def attempt_key_annotation(namespace: str, run: str, step: str, attempt: int) -> str:
    return json.dumps([namespace, run, step, attempt], separators=(",", ":"))


def attempt_key_of(pod: JSON) -> tuple[str, str, str, int] | None:
    """The attempt a pod runs, from its annotation; None if it is not a weft step pod."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ATTEMPT_KEY)
    try:
        namespace, run, step, attempt = json.loads(str(raw))
        return str(namespace), str(run), str(step), int(attempt)
    except (TypeError, ValueError):
        return None


def escape_expansion(text: str) -> str:
    """Keeps Kubernetes from expanding `$(VAR)` in a command, arg or env value.

    Kubernetes replaces `$(VAR)` with the variable's value and `$$` with `$` in those
    fields; the local runtime does neither, so a step must see exactly what it declared.
    """
    return text.replace("$", "$$")


# The pod ----------------------------------------------------------------------------------


def step_wrapper(working_dir: str) -> str:
    """The `/bin/sh -c` script around the user's argv (passed as "$@").

    It records the step's exit code in the shared volume when the step ends, which is what
    the upload container waits for. The step runs as a child so that SIGTERM (pod deletion,
    cancel, timeout) reaches it: a shell that is PID 1 would otherwise ignore the signal
    until SIGKILL. A relative working directory is created inside the image's own working
    directory, as the local runtime creates it inside the attempt's.
    """
    status = f"{podio.SHARED_DIR}/{podio.STATUS}"
    marker = f"{status}/{podio.EXIT_CODE_FILE}"
    lines = []
    if working_dir and not working_dir.startswith("/"):
        quoted = shlex.quote(working_dir)
        lines.append(f"mkdir -p {quoted} && cd {quoted} || exit 126")
    lines += [
        '"$@" &',
        "pid=$!",
        "trap 'kill -TERM $pid 2>/dev/null' TERM INT",
        'wait "$pid"',
        "code=$?",
        # `wait` returns early (code > 128) when the trap ran; wait again for the real end.
        'while kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done',
        f'echo "$code" > {marker}.tmp && mv -f {marker}.tmp {marker}',
        'exit "$code"',
    ]
    return "\n".join(lines)


#: The exporter variables naming the CA file the OTLP endpoint's certificate is checked with.
OTLP_CERTIFICATE_ENV = ("OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")


def pod_telemetry(telemetry: Mapping[str, str], config: ExecutorConfig) -> tuple[dict[str, str], list[JSON]]:
    """The exporter variables as the pod's containers see them, and the mounts the main
    container needs for them.

    The executor's OTLP CA file is a path in the executor's container, which a step pod
    does not have; with `--pod-api-ca-secret` (the CA of weft's certificates, which the
    chart's weft-tracer presents too) that Secret is mounted in every container and the
    variables point at its `ca.crt`. Without it the variables pass unchanged (a pod image
    that holds the CA at the same path still works).
    """
    if not config.kube.pod_api_ca_secret or not any(telemetry.get(name) for name in OTLP_CERTIFICATE_ENV):
        return dict(telemetry), []
    pod_env = {
        name: (f"{API_CA_DIR}/ca.crt" if name in OTLP_CERTIFICATE_ENV and value else value)
        for name, value in telemetry.items()
    }
    return pod_env, [{"name": API_CA_VOLUME, "mountPath": API_CA_DIR, "readOnly": True}]


def _env(spec: AttemptSpec, telemetry: Mapping[str, str]) -> list[JSON]:
    # The exporter variables first: a step's own env may redirect its own spans.
    values = {**telemetry, **spec.env}
    env: list[JSON] = [{"name": name, "value": escape_expansion(value)} for name, value in values.items()]
    env.append({"name": "WEFT_INPUTS", "value": f"{podio.SHARED_DIR}/{podio.INPUTS}"})
    env.append({"name": "WEFT_OUTPUTS", "value": f"{podio.SHARED_DIR}/{podio.OUTPUTS}"})
    for name, (secret, key) in spec.secret_env.items():
        # The value is resolved by the kubelet: it never passes through weft (invariant 8).
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def _resources(spec: AttemptSpec) -> JSON:
    resources: JSON = {}
    if spec.resources.requests:
        resources["requests"] = dict(spec.resources.requests)
    if spec.resources.limits:
        resources["limits"] = dict(spec.resources.limits)
    return resources


#: Where the helpers find the CA of weft-api's certificate (`KubeSettings.pod_api_ca_secret`).
API_CA_DIR = "/var/run/weft/api-ca"
API_CA_VOLUME = "weft-api-ca"


def helper_credentials(spec: AttemptSpec, config: ExecutorConfig) -> tuple[list[JSON], list[JSON], list[JSON]]:
    """(env, volume mounts, volumes) that let the helper containers reach weft-api as the
    namespace of the step: its namespace, the token from a Secret, the CA from a Secret."""
    env: list[JSON] = [{"name": "WEFT_NAMESPACE", "value": spec.namespace}]
    mounts: list[JSON] = []
    volumes: list[JSON] = []
    if config.kube.pod_api_token_secret:
        reference = {"name": config.kube.pod_api_token_secret, "key": "token"}
        env.append({"name": "WEFT_PEER_TOKEN", "valueFrom": {"secretKeyRef": reference}})
    if config.kube.pod_api_ca_secret:
        env.append({"name": "WEFT_PEER_CA_CERT", "value": f"{API_CA_DIR}/ca.crt"})
        mounts.append({"name": API_CA_VOLUME, "mountPath": API_CA_DIR, "readOnly": True})
        volumes.append({"name": API_CA_VOLUME, "secret": {"secretName": config.kube.pod_api_ca_secret}})
    return env, mounts, volumes


def attempt_staging_id(namespace: str, run: str, step: str, attempt: int) -> str:
    """The attempt's folder among the object store's staging keys (`weft_core.objectstore.staging_key`):
    a hash of the exact attempt key, so an executor that re-attaches to the pod finds it again."""
    key = "\0".join((namespace, run, step, str(attempt)))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def output_slot(spec: AttemptSpec, name: str) -> str:
    """An output's staging slot: its position among the step's declared outputs."""
    return str(list(spec.outputs).index(name))


MANIFEST_SLOT = "manifest"


def _store_args(config: ExecutorConfig, signed: podio.SignedAccess | None = None) -> list[str]:
    """How a helper container reaches the artifact store: presigned URLs, the object store
    with credentials, or weft-api."""
    if signed is not None:
        return ["--signed"]
    return ["--blob-store", config.pod_blob_store] if config.pod_blob_store else ["--api", config.pod_api]


def _helper_store_env(config: ExecutorConfig, signed: podio.SignedAccess | None = None) -> JSON:
    """What the helper containers, and only they, get for the object store: its credentials
    (`--pod-blob-store-secret`), or nothing when they use presigned URLs."""
    if signed is None and config.pod_blob_store and config.kube.pod_blob_store_secret:
        return {"envFrom": [{"secretRef": {"name": config.kube.pod_blob_store_secret}}]}
    return {}


def _signed_env(signed: podio.SignedAccess | None) -> list[JSON]:
    # Kubernetes expands $(VAR) in env values: URLs must reach the helper verbatim.
    if signed is None:
        return []
    return [{"name": name, "value": escape_expansion(value)} for name, value in signed.environment().items()]


def helper_tracing_env(spec: AttemptSpec, telemetry: Mapping[str, str]) -> list[JSON]:
    """What lets the helpers' spans join the run's trace under the attempt's span: the
    attempt's TRACEPARENT, the executor's exporter variables, and where the pod runs."""
    traceparent = spec.env.get("TRACEPARENT", "")
    if not traceparent or not telemetry:
        return []
    env: list[JSON] = [{"name": name, "value": escape_expansion(value)} for name, value in telemetry.items()]
    env.append({"name": "TRACEPARENT", "value": traceparent})
    for name, path in (
        ("WEFT_POD_NAME", "metadata.name"),
        ("WEFT_POD_NAMESPACE", "metadata.namespace"),
        ("WEFT_NODE_NAME", "spec.nodeName"),
    ):
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return env


def build_pod(
    spec: AttemptSpec,
    config: ExecutorConfig,
    signed: podio.SignedAccess | None = None,
    telemetry: Mapping[str, str] | None = None,
) -> JSON:
    """The pod manifest of one attempt (see the runtime's module docstring for its layout),
    with what the executor's configuration adds to every step pod.

    Args:
        signed: The attempt's presigned URLs, when its helpers use them instead of
            credentials; the input container gets the reads only, the output container
            the writes only.
        telemetry: The exporter variables the pod's containers get
            (`weft_core.telemetry.step_telemetry_env`, and the attempt's span token:
            `weft_executor.runtime.span_token_env`).
    """
    settings = config.kube
    name = pod_name(*spec.key)
    mount = [{"name": SHARED_VOLUME, "mountPath": podio.SHARED_DIR}]
    telemetry, ca_mounts = pod_telemetry(telemetry or {}, config)
    helper_env, helper_mounts, helper_volumes = helper_credentials(spec, config)
    helper_env = helper_env + helper_tracing_env(spec, telemetry)
    main: JSON = {
        "name": MAIN_CONTAINER,
        "image": spec.image,
        "command": [
            "/bin/sh",
            "-c",
            escape_expansion(step_wrapper(spec.working_dir)),
            "weft-step",
            *(escape_expansion(arg) for arg in spec.command),
        ],
        "env": _env(spec, telemetry),
        "volumeMounts": mount + ca_mounts,
        "securityContext": container_security_context(spec.security),
    }
    if spec.working_dir.startswith("/"):
        main["workingDir"] = spec.working_dir
    resources = _resources(spec)
    if resources:
        main["resources"] = resources
    fetch: JSON = {
        "name": FETCH_CONTAINER,
        "image": settings.pod_image,
        "command": [
            settings.python,
            "-m",
            "weft_executor.podio",
            "fetch",
            *_store_args(config, signed),
            "--dir",
            podio.SHARED_DIR,
            "--patience",
            f"{config.api_patience:g}",
            *(f"{input_name}={digest}" for input_name, digest in sorted(spec.inputs.items())),
        ],
        "env": helper_env + _signed_env(signed and podio.SignedAccess(reads=signed.reads)),
        "volumeMounts": mount + helper_mounts,
        "resources": HELPER_RESOURCES,
        "securityContext": container_security_context(),
        **_helper_store_env(config, signed),
    }
    upload: JSON = {
        "name": UPLOAD_CONTAINER,
        "image": settings.pod_image,
        "command": [
            settings.python,
            "-m",
            "weft_executor.podio",
            "upload",
            *_store_args(config, signed),
            "--dir",
            podio.SHARED_DIR,
            "--patience",
            f"{config.api_patience:g}",
            "--max-bytes",
            str(config.max_output_bytes),
            *spec.outputs,
        ],
        "env": helper_env + _signed_env(signed and podio.SignedAccess(writes=signed.writes, manifest=signed.manifest)),
        "volumeMounts": mount + helper_mounts,
        "resources": HELPER_RESOURCES,
        "securityContext": container_security_context(),
        **_helper_store_env(config, signed),
    }
    pod_spec: JSON = {
        "restartPolicy": "Never",
        # Service links would add a variable per Service in the namespace to the step's
        # environment: the same step would see a different environment on another cluster.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": max(0, round(config.kill_grace)),
        # Hardened unless the step asked otherwise (validated against its namespace's policy).
        "securityContext": pod_security_context(spec.security),
        "automountServiceAccountToken": spec.security.mount_service_account_token,
        "volumes": [{"name": SHARED_VOLUME, "emptyDir": {}}, *helper_volumes],
        "initContainers": [fetch],
        "containers": [main, upload],
    }
    if spec.timeout:
        pod_spec["activeDeadlineSeconds"] = math.ceil(spec.timeout) + DEADLINE_BACKSTOP_SECONDS
    if settings.pod_service_account:
        pod_spec["serviceAccountName"] = settings.pod_service_account
    if settings.pod_node_selector:
        pod_spec["nodeSelector"] = dict(settings.pod_node_selector)
    if settings.pod_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.pod_tolerations]
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        LABEL_NAMESPACE: label_value(spec.namespace),
        LABEL_RUN: label_value(spec.run),
        LABEL_STEP: label_value(spec.step),
        LABEL_ATTEMPT: str(spec.attempt),
    }
    if spec.replica:
        labels[LABEL_REPLICA] = str(spec.replica)
    if spec.spread:
        # Replicas of one attempt race each other: on different nodes a node's trouble is
        # not shared. Soft, so that replicas still run on a one-node cluster.
        same_attempt = {k: labels[k] for k in (LABEL_NAMESPACE, LABEL_RUN, LABEL_STEP, LABEL_ATTEMPT)}
        pod_spec["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": same_attempt},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        }
    annotations = {ANNOTATION_DNA: spec.dna, ANNOTATION_ATTEMPT_KEY: attempt_key_annotation(*spec.key)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels, "annotations": annotations},
        "spec": pod_spec,
    }


# Security ---------------------------------------------------------------------------------

#: The user step pods run as unless a step may run as root: the conventional "nonroot" uid
#: of distroless images. Set explicitly, since most images declare no USER and
#: runAsNonRoot alone would make the kubelet refuse them.
STEP_UID = 65532


def pod_security_context(security: pipeline_pb2.StepSecurity) -> JSON:
    """The pod's securityContext: a non-root user and group (also owning the shared
    volume, so the helpers and the step can read each other's files) and RuntimeDefault
    seccomp."""
    context: JSON = {"seccompProfile": {"type": "RuntimeDefault"}}
    if security.run_as_root:
        context.update({"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0})
    else:
        context.update({"runAsNonRoot": True, "runAsUser": STEP_UID, "runAsGroup": STEP_UID, "fsGroup": STEP_UID})
    return context


def container_security_context(security: pipeline_pb2.StepSecurity | None = None) -> JSON:
    """A container's securityContext: no privilege escalation and every capability
    dropped, except those the step adds back (None: weft's own helper containers, which
    never get any)."""
    capabilities: JSON = {"drop": ["ALL"]}
    if security is not None and security.add_capabilities:
        capabilities["add"] = list(security.add_capabilities)
    context: JSON = {"allowPrivilegeEscalation": False, "capabilities": capabilities}
    if security is None:
        # weft's helpers stay unprivileged even in a pod whose step runs as root.
        context.update({"runAsNonRoot": True, "runAsUser": STEP_UID, "runAsGroup": STEP_UID})
    elif not security.run_as_root:
        context["runAsNonRoot"] = True
    return context


# Reading a pod ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerReading:
    """One container's state: waiting (with a reason), running, or terminated."""

    name: str
    state: str  # "waiting" | "running" | "terminated" | "unknown"
    reason: str = ""
    message: str = ""
    exit_code: int = 0
    finished_at: str = ""
    #: The image the container runs as the node resolved it (`imageID`): a repo digest
    #: such as `docker.io/library/busybox@sha256:…`, or "" before the pull.
    image_id: str = ""

    @property
    def terminated(self) -> bool:
        return self.state == "terminated"

    @property
    def started(self) -> bool:
        return self.state in ("running", "terminated")


@dataclass(frozen=True)
class PodReading:
    """What the runtime decides on, condensed from a pod's status.

    Attributes:
        phase: Pending, Running, Succeeded, Failed or Unknown.
        reason: The pod's status reason (e.g. Evicted, DeadlineExceeded).
        message: The pod's status message.
        deleting: A deletion was requested (deletionTimestamp set).
        unschedulable: The scheduler's message when it cannot place the pod, else "".
        init: The input container.
        main: The user's container.
        upload: The output container.
    """

    phase: str
    reason: str
    message: str
    deleting: bool
    unschedulable: str
    init: ContainerReading | None
    main: ContainerReading | None
    upload: ContainerReading | None

    def containers(self) -> list[ContainerReading]:
        return [c for c in (self.init, self.main, self.upload) if c is not None]

    def stuck_waiting(self, reasons: frozenset[str]) -> ContainerReading | None:
        """The first container waiting for one of `reasons`, if any."""
        return next((c for c in self.containers() if c.state == "waiting" and c.reason in reasons), None)

    @property
    def terminal(self) -> bool:
        """Every container of the pod has ended (phase Succeeded or Failed)."""
        return self.phase in TERMINAL_PHASES

    @property
    def finished(self) -> bool:
        """The step ended (a terminal phase, or the step container ended).

        Not the same as `terminal`: once the step container ended, the output container
        may still be uploading.
        """
        return self.terminal or (self.main is not None and self.main.terminated)


def _container(statuses: Sequence[JSON] | None, name: str) -> ContainerReading | None:
    for status in statuses or []:
        if status.get("name") != name:
            continue
        state = status.get("state") or {}
        for kind in ("terminated", "running", "waiting"):
            if kind in state and state[kind] is not None:
                detail = state[kind]
                return ContainerReading(
                    name=name,
                    state=kind,
                    reason=str(detail.get("reason") or ""),
                    message=str(detail.get("message") or ""),
                    exit_code=int(detail.get("exitCode") or 0),
                    finished_at=str(detail.get("finishedAt") or ""),
                    image_id=str(status.get("imageID") or ""),
                )
        return ContainerReading(name=name, state="unknown", image_id=str(status.get("imageID") or ""))
    return None


def read_pod(pod: JSON) -> PodReading:
    """Condenses `pod` (API JSON) into a `PodReading`."""
    status = pod.get("status") or {}
    unschedulable = ""
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            unschedulable = str(condition.get("message") or "no node fits the pod")
    return PodReading(
        phase=str(status.get("phase") or "Pending"),
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or ""),
        deleting=bool((pod.get("metadata") or {}).get("deletionTimestamp")),
        unschedulable=unschedulable,
        init=_container(status.get("initContainerStatuses"), FETCH_CONTAINER),
        main=_container(status.get("containerStatuses"), MAIN_CONTAINER),
        upload=_container(status.get("containerStatuses"), UPLOAD_CONTAINER),
    )


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time of the API (`2024-01-02T03:04:05Z`), or None."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def finished_at(pod: JSON) -> datetime | None:
    """When the pod's work ended (latest container end), or None while it has not."""
    reading = read_pod(pod)
    if not reading.finished:
        return None
    ends = [parse_time(c.finished_at) for c in reading.containers() if c.terminated]
    known = [end for end in ends if end is not None]
    if known:
        return max(known)
    # Evicted or failed before any container ran: the pod's own start is the best we know.
    return parse_time(str((pod.get("status") or {}).get("startTime") or "")) or parse_time(
        str((pod.get("metadata") or {}).get("creationTimestamp") or "")
    )


def resource_version(pod: JSON) -> int:
    """The pod's resourceVersion as a number (etcd revisions are), or -1 if it is not one."""
    try:
        return int((pod.get("metadata") or {}).get("resourceVersion") or -1)
    except ValueError:
        return -1


def memory_limit(pod: JSON) -> str:
    """The user container's memory limit, or "" when none is set."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == MAIN_CONTAINER:
            return str(((container.get("resources") or {}).get("limits") or {}).get("memory") or "")
    return ""


def container_image(pod: JSON, name: str) -> str:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") == name:
            return str(container.get("image") or "")
    return ""
