"""The kubernetes runtime: every step attempt is one pod, watched through one list+watch.

weft's production runtime. The executor claims steps exactly as with the local runtime;
this module turns an attempt into a pod and the pod's fate into an `AttemptResult`.

The pod (`kube_pods.build_pod`)
    Named deterministically from (namespace, run, step, attempt): a readable prefix plus a
    hash of the exact key, a DNS-1123 label of at most 63 characters. Labelled
    `app.kubernetes.io/managed-by=weft` and `weft.dev/{namespace,run,step,attempt}`,
    annotated with the DNA and the exact attempt key; `restartPolicy: Never`; the step's
    resources; the executor's service account, node selector and tolerations. Creating a
    pod whose name exists (409) adopts that pod instead of launching a second one
    (invariant 1), and `adopt` re-attaches to a pod after its executor died (invariant 4).

Data handover with ANY image that has /bin/sh
    The pod has an emptyDir volume mounted at `/weft` in all its containers:

    1. init container `weft-inputs` (weft's own image) runs
       `python -m weft_executor.podio fetch`, which downloads every input by digest from
       weft-api's ArtifactService into `/weft/inputs` (`$WEFT_INPUTS`), verifying each
       digest;
    2. container `main` (the step's image) runs `/bin/sh -c <wrapper> weft-step ARGV...`:
       the wrapper runs the step's argv unchanged, with `$WEFT_INPUTS`/`$WEFT_OUTPUTS`
       set exactly as the local runtime sets them, then writes the exit code to
       `/weft/status/exit-code` and exits with it;
    3. container `weft-outputs` (weft's image; Kubernetes 1.20 has no native sidecars)
       runs `python -m weft_executor.podio upload`: it waits for that marker, checks and
       uploads every declared output, stores ONE manifest blob (output → digest, plus its
       verdict) and writes the manifest's digest to its termination message.

    The executor learns the outputs from the pod status alone: the termination message of
    `weft-outputs` names the manifest, which it reads from the artifact store. No other
    channel from the pod to the executor exists.

    With object storage the helpers skip weft-api and get no credentials: the executor
    presigns, per attempt, a GET URL per input blob and a PUT URL per output's staging key
    (`uploads/attempts/<attempt id>/<slot>`) and the manifest's, expiring with the attempt
    (`signed_lifetime`), and hands them to the helpers only (`$WEFT_SIGNED_ACCESS`). It then
    reads the staged manifest, checks its digest against the termination message, and
    publishes each staged output under its digest while verifying it (`publish_staged`).
    `--pod-blob-store-secret` instead gives the helpers the store's own credentials.

    Command, args and env values are escaped so that Kubernetes' `$(VAR)` expansion leaves
    them as declared.

Watching (`kube_watch.PodWatcher`)
    One list+watch per executor of the pods labelled managed-by=weft in its namespace,
    from the list's resourceVersion; a dropped stream resumes from the last version, 410
    Gone lists again. Each waiting attempt is woken by the events of its pod; nothing polls
    pods one by one. What Kubernetes says becomes a clear attempt failure: image pull errors
    (after `image_pull_grace`; the pod is then deleted), OOMKilled, Evicted, a pod deleted
    by someone else, unschedulable beyond `unschedulable_timeout`, and a non-zero exit code
    with the container's last log lines (log API, `tailLines`).

Logs and clean-up
    `read_logs` streams the step container's log through the pod log API (following it
    while the pod runs). When the attempt ends, that log is stored as the attempt's stdout
    blob (Kubernetes interleaves stdout and stderr in one log, so there is no separate
    stderr blob). A succeeded pod is deleted once the executor recorded its result
    (`release`); a failed pod is kept for `keep_failed_pods` seconds (at least
    `MIN_KEEP_FAILED_PODS`) for `kubectl` inspection, after which a periodic sweep, run by
    every executor from its start and surviving their restarts, deletes it (along with any finished pod
    nobody collected). The sweep deletes only pods whose every container ended (phase
    Succeeded or Failed) and whose step holds no claim in etcd: a pod whose output
    container still uploads, or whose step an executor works on (or is re-attaching to after
    a failover), belongs to that executor, not to the sweep.

    A step container that ends without recording its exit code (killed as a whole, e.g. a
    cgroup OOM group kill takes the wrapper with it) leaves the output container waiting
    for a marker that never comes, so the pod would never end: once the step container
    ended, the pod gets `helper_grace` seconds to end by itself, and is then deleted.

Outages
    Every artifact-store call (the manifest read, the log upload, and the pods' own
    fetches and uploads) rides out a weft-api restart: `RemoteBlobStore` retries it for
    `--api-patience` seconds. When the executor's lease is lost, its pods keep running
    and are re-attached once the step is claimed again (by this executor after it
    registered anew, or by another), never deleted and launched a second time.

Secret values never pass through weft: secret env becomes `valueFrom.secretKeyRef`, which
the kubelet resolves. Unlike the local runtime, weft therefore cannot redact a secret that
a step prints itself into its log. Every API call goes through a client-side QPS/burst
limit (`kube_client`), in threads: the event loop never blocks on the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from opentelemetry.trace import get_current_span

from weft.v1 import run_pb2
from weft_core import metrics
from weft_core.blobs import BlobStore, digest_of, missing_blobs
from weft_core.errors import NotFound, ServiceError, Unavailable
from weft_core.keyspace import Keyspace
from weft_core.objectstore import MAX_SIGNED_SECONDS, ObjectBlobStore, staging_key
from weft_core.store import Store
from weft_core.telemetry import (
    ATTR_CONTAINER_IMAGE_NAME,
    ATTR_K8S_NAMESPACE_NAME,
    ATTR_K8S_NODE_NAME,
    ATTR_K8S_POD_NAME,
    step_telemetry_env,
    tracer,
)
from weft_core.units import human_seconds
from weft_executor import podio
from weft_executor.config import ExecutorConfig
from weft_executor.runtime import (
    STDOUT,
    AttemptResult,
    AttemptSetupError,
    AttemptSpec,
    LaunchedAttempt,
    load_span_token_key,
    span_token_env,
)
from weft_executor.runtime.kube_client import (
    JSON,
    KubeApi,
    KubeError,
    KubeUnavailable,
    load_configuration,
)
from weft_executor.runtime.kube_pods import (
    CONFIG_REASONS,
    DEADLINE_BACKSTOP_SECONDS,
    FETCH_CONTAINER,
    HOPELESS_REASONS,
    IMAGE_PULL_REASONS,
    MAIN_CONTAINER,
    MANIFEST_SLOT,
    POD_SELECTOR,
    UPLOAD_CONTAINER,
    ContainerReading,
    PodReading,
    attempt_key_of,
    attempt_staging_id,
    build_pod,
    container_image,
    finished_at,
    memory_limit,
    output_slot,
    parse_time,
    pod_name,
    read_pod,
)
from weft_executor.runtime.kube_watch import PodSubscription, PodWatcher

log = logging.getLogger(__name__)

Attempt = run_pb2.Attempt

#: Seconds a pod's presigned URLs outlive its deadline (uploading outputs after the step).
SIGNED_MARGIN_SECONDS = 600.0
#: The largest output manifest read back from its staging key.
MANIFEST_LIMIT_BYTES = 4 * 1024 * 1024

#: The least `--keep-failed-pods` accepted. Below it a pod could be swept in the window
#: where no claim protects it: its executor died, the lease expired and no executor has
#: re-attached yet (invariant 4 allows two lease TTLs for that; see `min_keep_failed_pods`).
MIN_KEEP_FAILED_PODS = 60.0
#: Lines of the step's log quoted in a failed attempt's message.
FAILURE_LOG_LINES = 10
#: Tries (with backoff) of a pod create/get/delete that failed with 5xx, 429 or no answer.
API_TRIES = 5
FIRST_BACKOFF = 0.5
#: Largest chunk of a followed log.
LOG_CHUNK_BYTES = 64 * 1024


#: A step as etcd names it: (namespace, run, step).
StepRef = tuple[str, str, str]
#: Given steps, returns those that hold a claim in etcd right now. A claim is bound to its
#: executor's lease, so a claim that exists is a live one.
ClaimedSteps = Callable[[Sequence[StepRef]], Awaitable[set[StepRef]]]


def claims_in_etcd(store: Store, keyspace: Keyspace) -> ClaimedSteps:
    """The `ClaimedSteps` of an etcd keyspace: reads the steps' claim keys (batched).

    Args:
        store: The executor's etcd client.
        keyspace: weft's keys in that etcd.

    Returns:
        An async function; it raises `ServiceError` when etcd cannot answer.
    """

    async def claimed(steps: Sequence[StepRef]) -> set[StepRef]:
        keys = {keyspace.claim(*step): step for step in steps}
        found = await store.get_many(list(keys))
        return {keys[key] for key in found}

    return claimed


def min_keep_failed_pods(lease_ttl: float) -> float:
    """The least `--keep-failed-pods` an executor with this lease TTL accepts.

    A finished pod whose executor died is protected by no claim from the moment the lease
    expires until another executor claims the step and re-attaches, which invariant 4
    bounds by two lease TTLs; the pod must outlive that window.
    """
    return max(MIN_KEEP_FAILED_PODS, 2 * lease_ttl)


@dataclass
class KubeAttempt(LaunchedAttempt):
    """A pod this runtime launched or adopted, and what the runtime knows about it."""

    uid: str = ""
    subscription: PodSubscription | None = None
    adopted: bool = False
    #: `start_time` on the monotonic clock: the timeout is measured from it.
    started: float = 0.0
    kill_reason: str = ""
    deleted_by_us: bool = False
    pull_problem_since: float | None = None
    config_problem_since: float | None = None
    unschedulable_since: float | None = None
    ended: bool = False
    succeeded: bool = False

    @property
    def pod_name(self) -> str:
        return self.handle


@dataclass(frozen=True)
class Verdict:
    """How an attempt ended, before its logs and outputs are collected.

    Attributes:
        state: FAILED or CANCELLED; SUCCEEDED only once the manifest is read.
        message: Why, for people (a log tail is added for exit codes).
        delete: Delete the pod now (it is stuck or still running).
        collect_outputs: The output container reported: read its manifest.
        quote_log: Append the last log lines of this container to the message ("": none).
        exit_code: The step's exit code, when it exited.
    """

    state: run_pb2.Attempt.State
    message: str = ""
    delete: bool = False
    collect_outputs: bool = False
    quote_log: str = ""
    exit_code: int = 0


class KubernetesRuntime:
    """Runs attempts as pods (see the module docstring).

    Args:
        api: The rate-limited API client (owned by the runtime from now on).
        blobs: The artifact store (manifests in, logs out).
        config: The executor's settings; `config.kube` are the runtime's own.
        claimed_steps: Which steps hold a claim in etcd (the sweep spares their pods).
    """

    name = "kubernetes"

    def __init__(self, api: KubeApi, blobs: BlobStore, config: ExecutorConfig, claimed_steps: ClaimedSteps) -> None:
        self.api = api
        self.blobs = blobs
        self.config = config
        self.settings = config.kube
        self.claimed_steps = claimed_steps
        self.namespace = config.kube.namespace
        self._watcher: PodWatcher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._attempts: dict[str, KubeAttempt] = {}
        #: Pods this runtime created (not adopted), for tests and the benchmark.
        self.created = 0
        #: The exporter variables step pods get: their spans go where this executor's go.
        self.telemetry_env = step_telemetry_env(os.environ)
        #: Mints each pod's span token (its containers' exporters send it to weft-tracer).
        self.span_key = load_span_token_key(config.span_token_key_file)

    # Plumbing -------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the pod watch and the periodic sweep (needs the running event loop).

        `create_runtime` calls it, so every executor sweeps from its start; otherwise both
        start with the first launch or adoption.
        """
        _ = self.watcher

    @property
    def watcher(self) -> PodWatcher:
        """The pod watch, started on first use (it needs the running event loop)."""
        if self._watcher is None:
            loop = asyncio.get_running_loop()
            self._watcher = PodWatcher(self.api, self.namespace, POD_SELECTOR, loop)
            self._watcher.start()
            self._sweeper = loop.create_task(self._sweep_forever(), name="weft kube pod sweep")
        return self._watcher

    def _pod_path(self, name: str = "") -> str:
        base = f"/api/v1/namespaces/{self.namespace}/pods"
        return f"{base}/{name}" if name else base

    async def _call(self, what: str, method: str, path: str, **kwargs: Any) -> JSON:
        """An API request retried (with backoff) on 5xx, 429 and no answer; raises the last error."""
        delay = FIRST_BACKOFF
        for attempt in range(1, API_TRIES + 1):
            try:
                return await self.api.request(method, path, **kwargs)
            except KubeError as error:
                if not error.retryable or attempt == API_TRIES:
                    raise
                log.warning("%s: %s; retrying in %.1fs", what, error, delay)
            except KubeUnavailable as error:
                if attempt == API_TRIES:
                    raise
                log.warning("%s: %s; retrying in %.1fs", what, error, delay)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _get_pod(self, name: str) -> JSON | None:
        try:
            return await self._call(f"reading pod {name}", "GET", self._pod_path(name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def _delete_pod(self, name: str, uid: str, grace: float | None = None) -> None:
        """Deletes the pod if it is still the one with `uid`; gone already is fine."""
        options: JSON = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace is not None:
            options["gracePeriodSeconds"] = max(0, round(grace))
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self._call(f"deleting pod {name}", "DELETE", self._pod_path(name), body=options)
            metrics.pod_deleted()
        except KubeError as error:
            # 404: gone already; 409: the name belongs to another pod now (uid precondition).
            if error.status not in (404, 409):
                log.warning("could not delete pod %s/%s: %s", self.namespace, name, error)
        except KubeUnavailable as error:
            log.warning("could not delete pod %s/%s: %s", self.namespace, name, error)

    # Launch and adopt -----------------------------------------------------------------

    # Presigned access (object storage) ------------------------------------------------

    @property
    def signs_for_pods(self) -> ObjectBlobStore | None:
        """The object store whose URLs the executor presigns for its pods' helpers, or None
        when they use weft-api or the credentials of `--pod-blob-store-secret`."""
        if not self.config.pod_blob_store or self.settings.pod_blob_store_secret:
            return None
        blobs = self.blobs
        return blobs if isinstance(blobs, ObjectBlobStore) and blobs.can_sign else None

    def _staging(self, spec: AttemptSpec, slot: str) -> str:
        return staging_key(attempt_staging_id(*spec.key), slot)

    def signed_lifetime(self, spec: AttemptSpec) -> timedelta:
        """How long an attempt's URLs live: its timeout plus the Kubernetes backstop, the
        time it may wait to be scheduled and pulled, and a margin for the upload; the store's
        maximum (7 days) for a step without a timeout."""
        if not spec.timeout:
            return timedelta(seconds=MAX_SIGNED_SECONDS)
        waiting = self.settings.unschedulable_timeout + self.settings.image_pull_grace
        return timedelta(seconds=spec.timeout + DEADLINE_BACKSTOP_SECONDS + waiting + SIGNED_MARGIN_SECONDS)

    async def signed_access(self, spec: AttemptSpec) -> podio.SignedAccess | None:
        """The attempt's presigned URLs (see the module docstring), or None without them."""
        store = self.signs_for_pods
        if store is None:
            return None
        lifetime = self.signed_lifetime(spec)
        reads = await store.sign_reads(spec.inputs.values(), lifetime)
        slots = [self._staging(spec, output_slot(spec, name)) for name in spec.outputs]
        urls = await store.sign_staged_writes([*slots, self._staging(spec, MANIFEST_SLOT)], lifetime)
        return podio.SignedAccess(reads=reads, writes=dict(zip(spec.outputs, urls, strict=False)), manifest=urls[-1])

    async def _publish_staged(self, attempt: KubeAttempt, manifest_digest: str) -> podio.Manifest:
        """Reads the staged manifest (checking its digest) and, when it succeeded, publishes
        every staged output under its digest after verifying it (`publish_staged`)."""
        store = self.signs_for_pods
        assert store is not None
        spec = attempt.spec
        try:
            data = await store.read_staged(self._staging(spec, MANIFEST_SLOT), MANIFEST_LIMIT_BYTES)
        except NotFound:
            # A pod whose helpers had credentials (made before an upgrade, or with
            # --pod-blob-store-secret then) published its manifest and outputs itself.
            manifest = podio.Manifest.decode(await store.get(manifest_digest))
            missing = await missing_blobs(store, manifest.outputs.values())
            if missing:
                raise ValueError(f"neither staged nor stored: output(s) {', '.join(missing)}") from None
            return manifest
        if digest_of(data) != manifest_digest:
            raise ValueError(f"the staged manifest is {digest_of(data)}, not {manifest_digest}")
        manifest = podio.Manifest.decode(data)
        slots = {name: self._staging(spec, output_slot(spec, name)) for name in spec.outputs}
        if not manifest.succeeded:
            await store.remove_staged(list(slots.values()))
            return manifest
        for name in spec.outputs:
            if name in manifest.outputs:
                await store.publish_staged(slots[name], manifest.outputs[name], manifest.sizes.get(name, -1))
        return manifest

    async def launch(self, spec: AttemptSpec) -> KubeAttempt:
        watcher = self.watcher
        try:
            signed = await self.signed_access(spec)
        except ServiceError as error:
            raise AttemptSetupError(
                f"could not presign the attempt's object store URLs: {error.message} (credentials that cannot "
                "sign? give the pods' helpers the store's credentials instead: --pod-blob-store-secret, "
                "chart value blobStore.podAccess=credentials)"
            ) from None
        telemetry = {**self.telemetry_env, **span_token_env(spec, self.telemetry_env, self.span_key)}
        manifest = build_pod(spec, self.config, signed, telemetry)
        name = manifest["metadata"]["name"]
        attributes = {
            ATTR_K8S_NAMESPACE_NAME: self.namespace,
            ATTR_K8S_POD_NAME: name,
            ATTR_CONTAINER_IMAGE_NAME: spec.image,
        }
        get_current_span().set_attributes(attributes)  # the attempt's span: where it runs
        with tracer().start_as_current_span("weft.launch", attributes=attributes) as span:
            pod, adopted = await self._create_or_adopt(spec, manifest)
            span.set_attribute("weft.adopted", adopted)
        attempt = self._attempt(spec, pod, watcher, adopted=adopted)
        self._attempts[name] = attempt
        return attempt

    def _attempt(self, spec: AttemptSpec, pod: JSON, watcher: PodWatcher, *, adopted: bool) -> KubeAttempt:
        name, uid = str(pod["metadata"]["name"]), str(pod["metadata"].get("uid") or "")
        now = datetime.now(UTC)
        created = parse_time(str(pod["metadata"].get("creationTimestamp") or "")) or now
        # The API's timestamps have whole seconds: a pod created just now started now; an
        # adopted one as long ago as the API says (the timeout continues, it does not restart).
        age = 0.0 if not adopted else max(0.0, (now - created).total_seconds())
        return KubeAttempt(
            spec=spec,
            handle=name,
            start_time=created if adopted else now,
            uid=uid,
            subscription=watcher.subscribe(name, uid, pod),
            adopted=adopted,
            started=time.monotonic() - age,
        )

    async def _create_or_adopt(self, spec: AttemptSpec, manifest: JSON) -> tuple[JSON, bool]:
        name = manifest["metadata"]["name"]
        for _ in range(3):
            try:
                created = await self._call(f"creating pod {name}", "POST", self._pod_path(), body=manifest)
                self.created += 1
                metrics.pod_created()
                log.info("launched pod %s/%s for %s", self.namespace, name, "/".join(map(str, spec.key)))
                return created, False
            except KubeError as error:
                if error.status != 409:
                    raise AttemptSetupError(self._refusal(name, error)) from None
            except KubeUnavailable as error:
                raise AttemptSetupError(
                    f"could not create pod {name}: the Kubernetes API at {self.api.host} did not answer ({error})"
                ) from None
            # 409: the pod exists. It is this attempt's (an earlier create that timed out,
            # or an executor that died after creating it): adopt it, never launch twice.
            try:
                existing = await self._get_pod(name)
            except (KubeError, KubeUnavailable) as error:
                raise AttemptSetupError(f"pod {name} exists but cannot be read: {error}") from None
            if existing is None:
                continue  # deleted in between: create it again
            if attempt_key_of(existing) != spec.key:
                raise AttemptSetupError(
                    f"pod {name} exists but runs another attempt ({attempt_key_of(existing)}); "
                    f"delete it (kubectl -n {self.namespace} delete pod {name}) to run this one"
                )
            log.info("pod %s/%s already existed: adopted it", self.namespace, name)
            return existing, True
        raise AttemptSetupError(f"pod {name} kept vanishing while it was being created; try again")

    def _refusal(self, name: str, error: KubeError) -> str:
        if error.status == 403:
            return (
                f"Kubernetes refused to create pod {name} in namespace {self.namespace}: {error.message} "
                "(RBAC: the executor's service account needs create/get/list/watch/delete on pods; or a quota)"
            )
        if error.status == 404:
            return f"cannot create pod {name}: namespace {self.namespace} does not exist ({error.message})"
        if error.status == 422:
            return f"Kubernetes rejected pod {name} as invalid: {error.message}"
        return f"could not create pod {name}: {error}"

    def planned_handle(self, spec: AttemptSpec) -> str:
        return pod_name(*spec.key)

    async def stop_orphan(self, spec: AttemptSpec, handle: str, reason: str) -> bool:
        # Minimal (engineer "hot", issue #7 finding 3): the pod of an attempt whose
        # executor died keeps running after its run was cancelled or its step reused.
        if handle != pod_name(*spec.key):
            return False
        try:
            pod = await self._get_pod(handle)
        except (KubeError, KubeUnavailable) as error:
            raise Unavailable(f"cannot read pod {handle} to stop it: {error}; retrying later") from None
        if pod is None or attempt_key_of(pod) != spec.key:
            return False
        log.info("deleting pod %s/%s left running by another executor: %s", self.namespace, handle, reason)
        await self._delete_pod(handle, str(pod.get("metadata", {}).get("uid", "")), self.config.kill_grace)
        return True

    async def adopt(self, spec: AttemptSpec, handle: str) -> KubeAttempt | None:
        if handle != pod_name(*spec.key):
            return None  # not a pod of ours (e.g. a process id of the local runtime)
        watcher = self.watcher
        try:
            pod = await self._get_pod(handle)
        except (KubeError, KubeUnavailable) as error:
            raise Unavailable(f"cannot read pod {handle} to adopt it: {error}; retrying later") from None
        if pod is None or attempt_key_of(pod) != spec.key:
            return None
        attempt = self._attempt(spec, pod, watcher, adopted=True)
        self._attempts[handle] = attempt
        log.info("re-attached to pod %s/%s (%s)", self.namespace, handle, read_pod(pod).phase)
        return attempt

    # Wait -----------------------------------------------------------------------------

    async def wait(self, attempt: LaunchedAttempt) -> AttemptResult:
        assert isinstance(attempt, KubeAttempt)
        subscription = attempt.subscription
        assert subscription is not None, "wait on a released attempt"
        node = ""
        # wait runs in the attempt's span; the node is the attempt's, known once bound.
        attempt_span = get_current_span()
        try:
            with tracer().start_as_current_span("weft.wait", attributes={ATTR_K8S_POD_NAME: attempt.pod_name}) as span:
                while True:
                    subscription.changed.clear()
                    scheduled = str(((subscription.pod or {}).get("spec") or {}).get("nodeName") or "")
                    if scheduled and scheduled != node:
                        node = scheduled
                        attempt_span.set_attribute(ATTR_K8S_NODE_NAME, node)
                        span.set_attribute(ATTR_K8S_NODE_NAME, node)
                    verdict, wake_at = self._judge(attempt, subscription)
                    if verdict is not None:
                        break
                    timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(subscription.changed.wait(), timeout)
                span.set_attribute("weft.verdict", Attempt.State.Name(verdict.state).removeprefix("STATE_").lower())
            return await self._conclude(attempt, subscription, verdict)
        except asyncio.CancelledError:
            self.abandon(attempt)
            raise

    def _judge(self, attempt: KubeAttempt, subscription: PodSubscription) -> tuple[Verdict | None, float | None]:
        """The attempt's verdict if it ended, else None and when to look again (monotonic)."""
        spec = attempt.spec
        if attempt.kill_reason:
            return Verdict(Attempt.STATE_CANCELLED, attempt.kill_reason, delete=True), None
        pod = subscription.pod
        reading = read_pod(pod) if pod is not None else None
        if reading is not None:
            verdict = self._ended(attempt, reading)
            if verdict is not None:
                return verdict, None  # even if someone deleted the pod since: its status tells how
        if subscription.gone or (reading is not None and reading.deleting and not attempt.deleted_by_us):
            gone = "was deleted" if subscription.gone else "is being deleted"
            message = f"pod {attempt.pod_name} {gone} by someone else (not by weft) while the step ran"
            return Verdict(Attempt.STATE_FAILED, message, delete=True), None
        wakes: list[float] = []
        now = time.monotonic()
        if spec.timeout:
            elapsed = now - attempt.started
            if elapsed >= spec.timeout:
                message = f"timed out after {human_seconds(spec.timeout)}"
                return Verdict(Attempt.STATE_FAILED, message, delete=True), None
            wakes.append(now + spec.timeout - elapsed)
        if reading is None:
            return None, min(wakes, default=None)
        return self._stuck(attempt, reading, now, wakes)

    def _ended(self, attempt: KubeAttempt, reading: PodReading) -> Verdict | None:
        """The verdict of a pod whose containers ended (or were ended by Kubernetes)."""
        pod = attempt.subscription.pod if attempt.subscription else None
        if reading.reason == "Evicted":
            why = reading.message.strip() or "no reason given"
            return Verdict(Attempt.STATE_FAILED, f"evicted by Kubernetes: {why}", exit_code=_killed_code(reading))
        if reading.reason == "DeadlineExceeded":
            timeout = human_seconds(attempt.spec.timeout or 0)
            message = f"timed out after {timeout} (Kubernetes ended the pod)"
            return Verdict(Attempt.STATE_FAILED, message, exit_code=_killed_code(reading))
        init = reading.init
        if init is not None and init.terminated and init.exit_code != 0:
            report = podio.TerminationMessage.decode(init.message)
            if report is not None and report.error:
                return Verdict(Attempt.STATE_FAILED, f"could not fetch the inputs: {report.error}")
            message = f"could not fetch the inputs (container {FETCH_CONTAINER} exited with code {init.exit_code})"
            return Verdict(Attempt.STATE_FAILED, message, quote_log=FETCH_CONTAINER)
        main = reading.main
        upload = reading.upload
        if main is not None and main.terminated:
            if main.reason == "OOMKilled":
                limit = memory_limit(pod or {})
                shown = f"its memory limit of {limit}" if limit else "the memory available (no limit set)"
                return Verdict(
                    Attempt.STATE_FAILED,
                    f"OOMKilled: the step used more than {shown}; raise container.resources.limits.memory",
                    exit_code=main.exit_code,
                )
            if main.exit_code != 0:
                return Verdict(
                    Attempt.STATE_FAILED, _exit_text(main.exit_code), quote_log=MAIN_CONTAINER, exit_code=main.exit_code
                )
            if upload is not None and upload.terminated:
                return Verdict(Attempt.STATE_SUCCEEDED, collect_outputs=True)
            if reading.phase in ("Succeeded", "Failed"):
                return Verdict(Attempt.STATE_FAILED, f"container {UPLOAD_CONTAINER} ended without reporting")
            return None  # the outputs are being uploaded
        if upload is not None and upload.terminated and upload.exit_code != 0:
            report = podio.TerminationMessage.decode(upload.message)
            detail = report.error if report and report.error else f"exit code {upload.exit_code}"
            return Verdict(Attempt.STATE_FAILED, f"container {UPLOAD_CONTAINER} failed: {detail}", delete=True)
        if reading.phase == "Failed":
            why = " ".join(part for part in (reading.reason, reading.message) if part) or "no reason given"
            return Verdict(Attempt.STATE_FAILED, f"pod {attempt.pod_name} failed: {why}")
        return None

    def _stuck(
        self, attempt: KubeAttempt, reading: PodReading, now: float, wakes: list[float]
    ) -> tuple[Verdict | None, float | None]:
        """Fails a pod that cannot start (hopeless image, pull or config errors past their grace,
        unschedulable past its timeout); else None and when the next grace period ends."""
        pod = attempt.subscription.pod if attempt.subscription else None
        hopeless = reading.stuck_waiting(HOPELESS_REASONS)
        if hopeless is not None:
            image = container_image(pod or {}, hopeless.name)
            message = f"image {image!r} of container {hopeless.name} cannot be used: {hopeless.reason}"
            return Verdict(Attempt.STATE_FAILED, _with(message, hopeless.message), delete=True), None
        grace = self.settings.image_pull_grace
        pulling = reading.stuck_waiting(IMAGE_PULL_REASONS)
        if pulling is None:
            attempt.pull_problem_since = None
        else:
            since = attempt.pull_problem_since = attempt.pull_problem_since or now
            if now - since >= grace:
                image = container_image(pod or {}, pulling.name)
                message = (
                    f"image {image!r} of container {pulling.name} could not be pulled for {human_seconds(grace)} "
                    f"({pulling.reason})"
                )
                return Verdict(Attempt.STATE_FAILED, _with(message, pulling.message), delete=True), None
            wakes.append(since + grace)
        configuring = reading.stuck_waiting(CONFIG_REASONS)
        if configuring is None:
            attempt.config_problem_since = None
        else:
            since = attempt.config_problem_since = attempt.config_problem_since or now
            if now - since >= grace:
                message = (
                    f"container {configuring.name} could not be created for {human_seconds(grace)} "
                    f"({configuring.reason}; a missing secret or config map?)"
                )
                return Verdict(Attempt.STATE_FAILED, _with(message, configuring.message), delete=True), None
            wakes.append(since + grace)
        timeout = self.settings.unschedulable_timeout
        if not reading.unschedulable:
            attempt.unschedulable_since = None
        else:
            since = attempt.unschedulable_since = attempt.unschedulable_since or now
            if now - since >= timeout:
                message = f"pod {attempt.pod_name} could not be scheduled for {human_seconds(timeout)}"
                return Verdict(Attempt.STATE_FAILED, _with(message, reading.unschedulable), delete=True), None
            wakes.append(since + timeout)
        return None, min(wakes, default=None)

    async def _conclude(self, attempt: KubeAttempt, subscription: PodSubscription, verdict: Verdict) -> AttemptResult:
        """Collects the logs (and outputs), applies the clean-up policy, returns the result."""
        reading = read_pod(subscription.pod) if subscription.pod is not None else None
        main = reading.main if reading is not None else None
        end_time = _end_time(attempt, main)
        stdout_digest = ""
        if main is not None and main.started and not subscription.gone:
            stdout_digest = await self._store_log(attempt.pod_name)
        message = verdict.message
        if verdict.quote_log and not subscription.gone:
            message = _with_log_tail(message, await self._log_tail(attempt.pod_name, verdict.quote_log))
        state = verdict.state
        outputs: dict[str, str] = {}
        if verdict.collect_outputs:
            assert reading is not None
            state, message, outputs = await self._collect_outputs(attempt, reading)
        delete = verdict.delete or state == Attempt.STATE_CANCELLED
        if not delete and state == Attempt.STATE_FAILED and await self._outlives_its_step(attempt, subscription):
            log.info(
                "pod %s/%s: the step container ended %s ago but the pod still runs (its exit code was never "
                "recorded, so the output container would wait forever): deleting it",
                self.namespace,
                attempt.pod_name,
                human_seconds(self.settings.helper_grace),
            )
            delete = True
        if delete:
            attempt.deleted_by_us = True
            await self._delete_pod(attempt.pod_name, attempt.uid, self.config.kill_grace)
        attempt.ended = True
        attempt.succeeded = state == Attempt.STATE_SUCCEEDED
        if state != Attempt.STATE_SUCCEEDED:
            log.info("pod %s/%s: %s", self.namespace, attempt.pod_name, message.splitlines()[0] if message else "")
        return AttemptResult(
            state=state,
            message=message,
            exit_code=verdict.exit_code,
            output_digests=outputs,
            stdout_digest=stdout_digest,
            stderr_digest="",
            end_time=end_time,
            # What the tag resolved to on the node: recorded on the attempt and outcome
            # (provenance, explain); the DNA cannot use it, it is known only after the pull.
            image_id=main.image_id if main is not None else "",
        )

    async def _outlives_its_step(self, attempt: KubeAttempt, subscription: PodSubscription) -> bool:
        """True when the step container ended but the pod does not end within `helper_grace`.

        After a failed step the output container normally ends within a poll of the
        exit-code marker; if the step container was killed before its wrapper wrote the
        marker, the output container waits forever and the pod would hold its node's
        resources until the sweep (and the sweep spares pods that have not ended).
        """
        deadline = time.monotonic() + self.settings.helper_grace
        while True:
            subscription.changed.clear()
            if attempt.kill_reason:
                return True  # cancelled meanwhile: nothing in the pod is wanted any more
            pod = subscription.pod
            if pod is None or subscription.gone:
                return False
            reading = read_pod(pod)
            if reading.terminal or reading.deleting or reading.main is None or not reading.main.terminated:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(subscription.changed.wait(), left)

    async def _collect_outputs(
        self, attempt: KubeAttempt, reading: PodReading
    ) -> tuple[run_pb2.Attempt.State, str, dict[str, str]]:
        """Reads the manifest named by the output container's termination message."""
        upload = reading.upload
        assert upload is not None
        report = podio.TerminationMessage.decode(upload.message)
        failed = Attempt.STATE_FAILED
        if report is None or not (report.manifest or report.error):
            tail = await self._log_tail(attempt.pod_name, UPLOAD_CONTAINER)
            message = f"container {UPLOAD_CONTAINER} exited with code {upload.exit_code} without naming a manifest"
            return failed, _with_log_tail(message, tail), {}
        if not report.manifest:
            return failed, f"could not store the outputs: {report.error}", {}
        self._count_pod_bytes(reading)
        try:
            if self.signs_for_pods is not None:
                manifest = await self._publish_staged(attempt, report.manifest)
            else:
                manifest = podio.Manifest.decode(await self.blobs.get(report.manifest))
        except Unavailable:
            # The api stayed away longer than the store's patience: not the step's failure.
            # `wait` raises, the finished pod stays, and the step's next try re-attaches it.
            raise
        except (ServiceError, ValueError) as error:
            detail = error.message if isinstance(error, ServiceError) else str(error)
            return failed, f"could not read the output manifest {report.manifest}: {detail}", {}
        if not manifest.succeeded:
            return failed, manifest.message or "the outputs could not be stored", {}
        missing = [name for name in attempt.spec.outputs if name not in manifest.outputs]
        if missing:
            return failed, f"the output manifest {report.manifest} lacks output(s) {', '.join(missing)}", {}
        return Attempt.STATE_SUCCEEDED, "", {name: manifest.outputs[name] for name in attempt.spec.outputs}

    def _count_pod_bytes(self, reading: PodReading) -> None:
        """Counts what the pod's helpers moved straight to object storage (they report it
        in their termination messages; the executor is what Prometheus scrapes)."""
        if not self.config.pod_blob_store:
            return
        for container, direction in ((reading.init, "out"), (reading.upload, "in")):
            report = podio.TerminationMessage.decode(container.message) if container is not None else None
            if report is not None and report.moved:
                metrics.blob_store_bytes(direction, "pod", report.moved)

    # Logs -----------------------------------------------------------------------------

    def _log_path(self, name: str) -> str:
        return f"{self._pod_path(name)}/log"

    async def _log_tail(self, name: str, container: str) -> str:
        """The container's last lines (log API `tailLines`), or "" if there is no log."""
        query = [("container", container), ("tailLines", FAILURE_LOG_LINES)]
        path = self._log_path(name)

        def read() -> bytes:
            stream = self.api.open_stream(path, query=query, read_timeout=30, take_token=False)
            try:
                return bytes(stream.read())
            finally:
                stream.release_conn()

        try:
            await self.api.limiter.wait()
            data = await self.api.run(read)
        except (KubeError, KubeUnavailable, OSError) as error:
            log.info("no log tail of %s/%s: %s", name, container, error)
            return ""
        return data.decode("utf-8", "replace").rstrip("\n")

    async def _store_log(self, name: str) -> str:
        """Stores the step container's whole log as a blob; returns its digest ("" if none)."""
        path = self._log_path(name)

        def download(target: Path) -> None:
            stream = self.api.open_stream(
                path, query=[("container", MAIN_CONTAINER)], read_timeout=60, take_token=False
            )
            try:
                with open(target, "wb") as out:
                    for chunk in stream.stream(LOG_CHUNK_BYTES):
                        out.write(chunk)
            finally:
                stream.release_conn()

        handle, spool = tempfile.mkstemp(prefix="weft-pod-log-")
        os.close(handle)
        try:
            await self.api.limiter.wait()
            await self.api.run(lambda: download(Path(spool)))
            return (await self.blobs.put_file(Path(spool))).digest
        except (KubeError, KubeUnavailable, OSError) as error:
            log.warning("could not read the log of pod %s/%s: %s", self.namespace, name, error)
            return ""
        except Unavailable:
            raise  # as for the manifest: the pod is re-attached and its log stored later
        except ServiceError as error:
            log.warning("could not store the log of pod %s/%s: %s", self.namespace, name, error.message)
            return ""
        finally:
            with contextlib.suppress(OSError):
                os.unlink(spool)

    async def read_logs(self, attempt: LaunchedAttempt, *, follow: bool) -> AsyncIterator[tuple[int, bytes]]:
        assert isinstance(attempt, KubeAttempt)
        if attempt.subscription is None:
            return  # released: the logs are in the artifact store
        # A subscription of our own: sharing the attempt's would steal its wake-ups.
        subscription = self.watcher.subscribe(attempt.pod_name, attempt.uid, attempt.subscription.pod)
        try:
            while True:
                subscription.changed.clear()
                reading = read_pod(subscription.pod) if subscription.pod is not None else None
                started = reading is not None and reading.main is not None and reading.main.started
                if started:
                    break
                if not follow or subscription.gone or attempt.ended or (reading is not None and reading.finished):
                    return
                await subscription.changed.wait()
            query: list[tuple[str, Any]] = [("container", MAIN_CONTAINER)]
            if follow:
                query.append(("follow", "true"))
            async for chunk in self._relay(self._log_path(attempt.pod_name), query):
                yield STDOUT, chunk
        finally:
            self.watcher.unsubscribe(subscription)

    async def _relay(self, path: str, query: Sequence[tuple[str, Any]]) -> AsyncIterator[bytes]:
        """Streams a (followed) log from a thread of its own; closing the iterator stops it."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        stopped = threading.Event()
        opened: list[Any] = []

        def put(item: bytes | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(chunks.put_nowait, item)

        def pump() -> None:
            import urllib3

            try:
                stream = self.api.open_stream(path, query=query)
                opened.append(stream)
                try:
                    while not stopped.is_set():
                        chunk = stream.read1(LOG_CHUNK_BYTES)
                        if not chunk:
                            break
                        put(bytes(chunk))
                finally:
                    stream.close()
                put(None)
            except KubeError as error:
                # 400: the container has not started or its log is gone; nothing to show.
                put(None if error.status in (400, 404) else error)
            except (KubeUnavailable, urllib3.exceptions.HTTPError, OSError) as error:
                put(None if stopped.is_set() else KubeUnavailable(f"the log stream broke off: {error}"))

        threading.Thread(target=pump, name="weft-kube-log", daemon=True).start()
        try:
            while True:
                item = await chunks.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    log.warning("log of %s: %s", path, item)
                    return
                yield item
        finally:
            stopped.set()
            for stream in opened:
                with contextlib.suppress(Exception):
                    stream.shutdown()

    # Kill, abandon, release, close -----------------------------------------------------

    async def kill(self, attempt: LaunchedAttempt, reason: str) -> None:
        assert isinstance(attempt, KubeAttempt)
        if attempt.ended or attempt.kill_reason:
            return
        attempt.kill_reason = reason or "cancelled"
        if attempt.subscription is not None:
            attempt.subscription.changed.set()  # the pending `wait` stores the log, then deletes

    def abandon(self, attempt: LaunchedAttempt) -> None:
        assert isinstance(attempt, KubeAttempt)
        # The pod keeps running: the executor that takes the step over adopts it.
        self._forget(attempt)

    def _forget(self, attempt: KubeAttempt) -> None:
        self._attempts.pop(attempt.pod_name, None)
        if attempt.subscription is not None and self._watcher is not None:
            self._watcher.unsubscribe(attempt.subscription)
        attempt.subscription = None

    async def release(self, attempt: LaunchedAttempt) -> None:
        assert isinstance(attempt, KubeAttempt)
        self._forget(attempt)
        if attempt.succeeded and not attempt.deleted_by_us:
            # Only now: until the executor recorded the result, the pod is what an executor
            # taking the step over would re-attach to.
            attempt.deleted_by_us = True
            await self._delete_pod(attempt.pod_name, attempt.uid)

    async def close(self) -> None:
        """Stops watching; running pods are left for the executor that takes their steps over."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for attempt in list(self._attempts.values()):
            self._forget(attempt)
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
        self.api.close()

    def running(self) -> list[KubeAttempt]:
        """Attempts launched or adopted and not yet released or abandoned."""
        return list(self._attempts.values())

    # The sweep --------------------------------------------------------------------------

    @property
    def sweep_interval(self) -> float:
        """Seconds between two sweeps (the first comes as soon as the watch has listed)."""
        return min(60.0, max(0.5, self.settings.keep_failed_pods / 4))

    async def _sweep_forever(self) -> None:
        assert self._watcher is not None
        await self._watcher.synced.wait()
        while True:
            try:
                await self.sweep()
            except Exception:  # the sweep is housekeeping: never let it die
                log.exception("sweeping finished pods failed")
            await asyncio.sleep(self.sweep_interval)

    async def sweep(self, now: datetime | None = None) -> int:
        """Deletes pods that finished more than `keep_failed_pods` ago; returns how many.

        Each executor sweeps its namespace, so a kept pod is deleted even when the executor
        that kept it is gone. A pod is deleted only when every container of it ended (phase
        Succeeded or Failed: an output container may still be uploading after the step
        ended) and its step holds no claim in etcd (an executor works on the step or has
        taken it over and re-attaches to the pod; a claim covers every attempt of its step,
        so the pods of a step's earlier attempts are kept until the step is done). When
        etcd cannot say, nothing is deleted. Pods of attempts in progress here, and pods
        that carry no weft attempt key, are never deleted.

        Args:
            now: The time to measure the pods' age against (default: the clock's).
        """
        watcher = self.watcher
        if not watcher.synced.is_set():
            return 0
        cutoff = (now or datetime.now(UTC)).timestamp() - self.settings.keep_failed_pods
        candidates: list[tuple[str, str, StepRef]] = []
        for name, pod in list(watcher.pods.items()):
            reading = read_pod(pod)
            key = attempt_key_of(pod)
            if name in self._attempts or reading.deleting or not reading.terminal or key is None:
                continue
            ended = finished_at(pod)
            if ended is not None and ended.timestamp() <= cutoff:
                candidates.append((name, str(pod["metadata"].get("uid") or ""), key[:3]))
        if not candidates:
            return 0
        try:
            claimed = await self.claimed_steps([step for _, _, step in candidates])
        except ServiceError as error:
            log.warning("not sweeping finished pods: cannot read their steps' claims (%s)", error.message)
            return 0
        # A claim taken after this read (an executor re-attaching right now) can still lose
        # its pod; the uid precondition and the pod's final status keep that to a lost log.
        doomed = [(name, uid) for name, uid, step in candidates if step not in claimed]
        kept = human_seconds(self.settings.keep_failed_pods)
        for name, uid in doomed:
            log.info("deleting finished pod %s/%s (kept for %s)", self.namespace, name, kept)
            await self._delete_pod(name, uid)
        return len(doomed)


def _killed_code(reading: PodReading) -> int:
    """The exit code of a step Kubernetes ended: the container's own if it reports one,
    else -9 (killed by SIGKILL, as the local runtime records a signal), never 0."""
    main = reading.main
    if main is not None and main.terminated and main.exit_code != 0:
        return main.exit_code
    return -int(signal.SIGKILL)


def _end_time(attempt: KubeAttempt, main: ContainerReading | None) -> datetime:
    """When the attempt ended, never before its recorded start.

    The API's `finishedAt` has whole seconds (cut, not rounded) and the node's clock,
    while the start is this executor's clock: the end is the moment the executor saw the
    pod end when that lies within finishedAt's second, else finishedAt, and in any case
    no earlier than the start, so a duration is never negative.
    """
    seen = datetime.now(UTC)
    finished = parse_time(main.finished_at) if main is not None and main.terminated else None
    end = seen if finished is None or finished <= seen < finished + timedelta(seconds=1) else finished
    return max(end, attempt.start_time)


def _with(message: str, detail: str) -> str:
    detail = detail.strip()
    return f"{message}: {detail}" if detail else message


def _exit_text(code: int) -> str:
    if 128 < code < 128 + 65:
        try:
            return f"exit code {code} (killed by {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def _with_log_tail(message: str, tail: str) -> str:
    return f"{message}; last log lines:\n{tail}" if tail else message


def create_runtime(config: ExecutorConfig, blobs: BlobStore, store: Store) -> KubernetesRuntime:
    """The kubernetes runtime for an `ExecutorConfig` (flags `--namespace`, `--pod-image`...).

    Args:
        config: The executor's settings.
        blobs: The artifact store.
        store: The executor's etcd client: the sweep reads the steps' claims through it.

    Raises:
        RuntimeError: A setting the runtime cannot do without is missing or out of range.
    """
    least = min_keep_failed_pods(config.lease_ttl)
    if config.kube.keep_failed_pods < least:
        raise RuntimeError(
            f"--keep-failed-pods {config.kube.keep_failed_pods:g} is too short: failed pods must be kept at least "
            f"{least:g} seconds (and at least twice --lease-ttl), or the sweep could delete a pod before the "
            "executor taking over a dead executor's step re-attaches to it"
        )
    if not config.kube.pod_image:
        raise RuntimeError(
            "--pod-image is required with --runtime kubernetes: weft's own image, which runs the input and "
            "output containers of every step pod (e.g. --pod-image weft:0.1.0)"
        )
    settings = config.kube
    api = KubeApi(load_configuration(settings.kubeconfig), qps=settings.kube_qps, burst=settings.kube_burst)
    runtime = KubernetesRuntime(api, blobs, config, claims_in_etcd(store, Keyspace(config.etcd_root)))
    # Watch and sweep from the start, not from the first launch: after every executor
    # restarted, an idle cluster's finished orphan pods must still be swept.
    runtime.start()
    return runtime
