"""weft-executor: one process that registers in etcd, claims ready steps and runs them.

`Executor` wires the parts together and runs five loops:

- lease keep-alive (`registration`): on loss, abandon every attempt, then register again;
- runs (`runindex` prefix, all namespaces): start PENDING runs (derive root readiness,
  then RUNNING) and stop CANCELLING runs (kill this executor's attempts of the run,
  then finalize it once no claims remain);
- ready marks and claims (`scheduler.ReadyQueue`): the candidates to claim;
- dispatch: while below `--max-parallel`, claim a candidate with a transaction bound to
  the lease and start a `StepRunner` task for it.

It also serves ExecutorService (live logs) with health and reflection. Everything an
executor knows is re-derived from etcd at start, so killing and restarting one loses
nothing (invariant 5). Tests run it in-process (`start()`/`stop()`); `__main__` runs it
as the `weft-executor` command.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from weft.v1 import executor_pb2_grpc, run_pb2
from weft_core import logs, metrics
from weft_core.auth import load_auth
from weft_core.blobs import BlobStore, RemoteBlobStore, blob_namespace
from weft_core.errors import NotFound, ServiceError, Unavailable
from weft_core.keyspace import Keyspace
from weft_core.objectstore import open_blob_store
from weft_core.pipelines import PipelineReader
from weft_core.server import ServiceBinding, WeftServer, create_server
from weft_core.store import KeyValue, Store, WatchEvent, absent, op_get, op_put, present
from weft_core.tls import etcd_tls_of, peer_of, server_tls_of
from weft_executor.config import ExecutorConfig, default_executor_id
from weft_executor.progress import TERMINAL_RUN_STATES, RunProgress, RunRef, RunRefs
from weft_executor.registration import Registration, registration_record
from weft_executor.runtime import Runtime, load_span_token_key
from weft_executor.runtime.local import LocalRuntime
from weft_executor.scheduler import ReadyQueue, StepKey, follow_prefix
from weft_executor.service import EXECUTOR_RULES, ExecutorServicer, LiveAttempts
from weft_executor.steps import Claim, ClaimLost, StepRunner, StepTask, claim_parts

log = logging.getLogger(__name__)

Run = run_pb2.Run

#: Seconds between retries of a run transition that failed because etcd was unreachable.
RETRY_SECONDS = 1.0
#: Longest wait between retries of a step whose processing failed unexpectedly.
MAX_STEP_RETRY_SECONDS = 10.0
#: Seconds between looks for claims of ours that no task works on.
CLAIM_SWEEP_SECONDS = 2.0


def advertised_address(listen: str, port: int, advertise_host: str = "") -> str:
    """`host:port` other processes can dial: a wildcard listen host becomes $POD_IP (set by
    the Helm chart) or this host's address, unless `advertise_host` says otherwise."""
    host = advertise_host or listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = os.environ.get("POD_IP", "")
    if not host:
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"{host}:{port}"


def _log_context_of(key: StepKey) -> Any:
    """The context of a task that works on step `key`: its log lines name run and step, its
    blobs belong to the step's namespace."""
    ns, run_id, step = key
    context = logs.context_for(run=f"namespaces/{ns}/runs/{run_id}", step=step)
    context.run(blob_namespace.set, ns)  # and its blobs belong to the step's namespace
    return context


class Executor:
    """A weft executor (see the module docstring).

    Args:
        config: Its settings.
        environ: Environment the local runtime reads PATH/HOME/LANG and secrets from
            (default: os.environ).
    """

    def __init__(self, config: ExecutorConfig, *, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.executor_id = config.executor_id or default_executor_id()
        self.keyspace = Keyspace(config.etcd_root)
        self.environ = os.environ if environ is None else environ
        self.address = ""
        self.queue = ReadyQueue()
        self.live_attempts: LiveAttempts = {}
        #: Runs seen CANCELLING, with the reason recorded on the run.
        self.cancelling: dict[tuple[str, str], str] = {}
        self._tasks: dict[StepKey, tuple[StepTask, asyncio.Task[None]]] = {}
        self._loops: set[asyncio.Task[Any]] = set()
        self._jobs: set[asyncio.Task[Any]] = set()
        self._starting: set[tuple[str, str]] = set()
        self._finalizing: dict[tuple[str, str], bool] = {}
        self._store: Store | None = None
        self._blobs: BlobStore | None = None
        self._server: WeftServer | None = None
        self._registration: Registration | None = None
        self._runtime: Runtime | None = None
        self._runner: StepRunner | None = None
        self._progress: RunProgress | None = None
        self._pipelines: PipelineReader | None = None
        self._run_refs: RunRefs | None = None
        #: Claim transactions etcd refused (another executor was first): each one is a
        #: wasted round trip, so the scheduler tries to keep this low.
        self.claims_refused = 0
        self._metrics: metrics.MetricsEndpoint | None = None

    # Parts, available after start() ---------------------------------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "executor not started"
        return self._store

    @property
    def runner(self) -> StepRunner:
        assert self._runner is not None, "executor not started"
        return self._runner

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "executor not started"
        return self._runtime

    @property
    def registration(self) -> Registration:
        assert self._registration is not None, "executor not started"
        return self._registration

    @property
    def progress(self) -> RunProgress:
        assert self._progress is not None, "executor not started"
        return self._progress

    @property
    def launches(self) -> int:
        """Processes or pods this executor launched since it started."""
        return self._runner.launches if self._runner is not None else 0

    def running_steps(self) -> list[StepKey]:
        """Steps this executor holds claims on right now."""
        return list(self._tasks)

    # Start and stop -------------------------------------------------------------------

    def _make_runtime(self, blobs: BlobStore) -> Runtime:
        if self.config.runtime == "local":
            return LocalRuntime(
                self.config.work_dir,
                blobs,
                max_output_bytes=self.config.max_output_bytes,
                kill_grace=self.config.kill_grace,
                environ=self.environ,
                step_user=self.config.step_user,
                span_key=load_span_token_key(self.config.span_token_key_file),
            )
        # Imported by name: the Kubernetes runtime (and its client) loads only when asked for.
        try:
            module = importlib.import_module("weft_executor.runtime.kubernetes")
        except ImportError as error:
            raise RuntimeError(f"the kubernetes runtime cannot be loaded ({error}); use --runtime local") from error
        create_runtime = getattr(module, "create_runtime", None)
        if create_runtime is None:
            raise RuntimeError("weft_executor.runtime.kubernetes has no create_runtime(config, blobs, store)")
        runtime: Runtime = create_runtime(self.config, blobs, self.store)
        return runtime

    async def start(self) -> None:
        """Serves ExecutorService, registers in etcd and starts scheduling."""
        self._store = Store(self.config.etcd_endpoints, tls=etcd_tls_of(self.config), group_commit=True)
        # With object storage, step data goes straight to the store, not through weft-api.
        self._blobs = (
            open_blob_store(self.config.blob_store, counted_as="executor")
            if self.config.blob_store
            else RemoteBlobStore(self.config.api, patience=self.config.api_patience, peer=peer_of(self.config))
        )
        self._pipelines = PipelineReader(self._store, self.keyspace, self._blobs, cache_size=64)
        self._run_refs = RunRefs(self._pipelines)
        self._runtime = self._make_runtime(self._blobs)
        self._progress = RunProgress(self._store, self.keyspace, stop_orphan=self._stop_orphan)
        self._runner = StepRunner(
            executor_id=self.executor_id,
            store=self._store,
            keyspace=self.keyspace,
            blobs=self._blobs,
            run_refs=self._run_refs,
            progress=self._progress,
            runtime=self._runtime,
            is_cancelling=lambda ns, run: (ns, run) in self.cancelling,
            live_attempts=self.live_attempts,
            on_slot_freed=self.queue.changed.set,
        )
        servicer = ExecutorServicer(self.executor_id, self.live_attempts)
        binding = ServiceBinding(
            "weft.v1.ExecutorService", servicer, executor_pb2_grpc.add_ExecutorServiceServicer_to_server
        )
        auth = load_auth(self.config.auth_tokens_file, self.config.auth_kube_roles_file, self.config.auth_kubeconfig)
        self._server, port = create_server(
            self.config.listen,
            [binding],
            auth=auth.with_rules(EXECUTOR_RULES) if auth is not None else None,
            tls=server_tls_of(self.config),
        )
        self._server.follow_readiness(self._ready)  # NOT_SERVING without a lease or etcd
        await self._server.start()
        if self.config.metrics_port is not None:
            self._metrics = metrics.serve_metrics(self.config.listen.rpartition(":")[0], self.config.metrics_port)
            log.info("serving metrics at http://%s/metrics", self._metrics.address)
        metrics.watch_ready_queue(lambda: len(self.queue))
        self.address = advertised_address(self.config.listen, port, self.config.advertise_host)
        record = registration_record(self.executor_id, self.address, self._runtime.name)
        self._registration = Registration(self._store, self.keyspace, self.executor_id, self.config.lease_ttl, record)
        while True:
            try:
                await self._registration.register()
                break
            except ServiceError as error:
                log.warning("cannot register in etcd yet (%s); retrying", error.message)
                await asyncio.sleep(RETRY_SECONDS)
        ks = self.keyspace
        self._loop(self._registration.keep_alive(self._on_lease_lost), "lease keep-alive")
        self._loop(follow_prefix(self._store, ks.run_index_all(), self._runs_listed, self._runs_changed), "runs")
        self._loop(
            follow_prefix(self._store, ks.scheduling_all(), self._scheduling_listed, self._scheduling_changed),
            "ready marks and claims",
        )
        self._loop(self._dispatch(), "dispatch")
        self._loop(self._sweep_claims(), "claim sweep")
        log.info(
            "executor %s started: runtime %s, max %d parallel, services at %s",
            self.executor_id,
            self._runtime.name,
            self.config.max_parallel,
            self.address,
        )

    async def stop(self) -> None:
        """Stops scheduling, abandons running attempts, revokes the lease (so other
        executors take the steps over at once) and closes everything."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self._abandon_all()
        if self._runner is not None:
            await self._runner.close()
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._registration is not None:
            await self._registration.unregister()
        if self._server is not None:
            await self._server.stop(grace=1.0)
        if self._runtime is not None:
            await self._runtime.close()
        if self._blobs is not None:
            await self._blobs.close()
        if self._store is not None:
            await self._store.close()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)

    async def _ready(self) -> bool:
        """Readiness: this executor holds a live lease and etcd answers."""
        registration = self._registration
        return registration is not None and registration.valid.is_set() and await self.store.reachable()

    def _loop(self, coroutine: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.create_task(coroutine, name=f"executor {what}")
        self._loops.add(task)
        task.add_done_callback(lambda t: self._loop_ended(t, what))

    def _loop_ended(self, task: asyncio.Task[Any], what: str) -> None:
        self._loops.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("executor loop %r died", what, exc_info=task.exception())

    def _job(self, coroutine: Coroutine[Any, Any, Any], what: str, context: Any = None) -> None:
        task = asyncio.create_task(coroutine, name=what, context=context)
        self._jobs.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._jobs.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", what, exc_info=t.exception())

        task.add_done_callback(done)

    async def _abandon_all(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_orphan(self, ref: RunRef, step: str, attempt: run_pb2.Attempt, reason: str) -> None:
        await self.runner.stop_orphan(ref, step, attempt, reason)

    async def _on_lease_lost(self) -> None:
        # Others may be running our steps already: stop ours before claiming anything again.
        await self._abandon_all()

    # Runs -----------------------------------------------------------------------------

    def _run_of(self, key: bytes) -> tuple[str, str]:
        ns, _, run_id = self.keyspace.tail(key, self.keyspace.run_index_all()).partition("/")
        return ns, run_id

    async def _runs_listed(self, kvs: list[KeyValue]) -> None:
        for kv in kvs:
            self._run_changed(kv.key, kv.value)

    async def _runs_changed(self, events: list[WatchEvent]) -> None:
        for event in events:
            if not event.deleted:
                self._run_changed(event.key, event.value)

    def _run_changed(self, key: bytes, value: bytes) -> None:
        ns, run_id = self._run_of(key)
        run = Run()
        try:
            run.ParseFromString(value)
        except Exception:  # a corrupt index entry must not stop the loop
            log.error("runindex entry %s does not parse; ignoring it", key.decode())
            return
        metrics.run_state(ns, run_id, Run.State.Name(run.state))
        if run.state == Run.STATE_PENDING and (ns, run_id) not in self._starting:
            self._starting.add((ns, run_id))
            context = logs.context_for(run=f"namespaces/{ns}/runs/{run_id}", traceparent=run.traceparent)
            self._job(self._start_run(ns, run_id), f"start run {ns}/{run_id}", context)
        elif run.state == Run.STATE_CANCELLING and (ns, run_id) not in self.cancelling:
            self.cancelling[(ns, run_id)] = run.message
            self._stop_attempts_of(ns, run_id, run.message)
            self._request_finalize(ns, run_id)
        elif run.state in TERMINAL_RUN_STATES:
            self.cancelling.pop((ns, run_id), None)
            self.progress.forget(ns, run_id)
            # A PENDING run is cancelled straight to CANCELLED (there may be no executor at
            # all): any attempt of ours that slipped in must stop too; its commit is refused.
            self._stop_attempts_of(ns, run_id, run.message or Run.State.Name(run.state).removeprefix("STATE_"))

    async def _run_ref(self, ns: str, run_id: str, run: Run) -> RunRef | None:
        assert self._run_refs is not None
        try:
            return await self._run_refs.of(ns, run_id, run)
        except NotFound as error:
            await self.progress.fail_run(ns, run_id, f"cannot run: {error.message}")
            return None

    async def _start_run(self, ns: str, run_id: str) -> None:
        try:
            while True:
                try:
                    found = await self.progress.read_run(ns, run_id)
                    if found is None or found[0].state != Run.STATE_PENDING:
                        return
                    ref = await self._run_ref(ns, run_id, found[0])
                    if ref is not None:
                        # The index entry has no trace context; the run record has.
                        with logs.log_context(trace_id=logs.trace_id_of(found[0].traceparent)):
                            await self.progress.start_run(ref)
                    return
                except ServiceError as error:
                    log.warning("cannot start run %s/%s yet: %s", ns, run_id, error.message)
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            self._starting.discard((ns, run_id))

    def _stop_attempts_of(self, ns: str, run_id: str, reason: str) -> None:
        message = f"run cancelled{': ' + reason if reason else ''}"
        for (task_ns, task_run, _), (task, _) in self._tasks.items():
            if (task_ns, task_run) != (ns, run_id):
                continue
            task.cancel_reason = reason or "cancelled"
            task.cancelled.set()
            if task.attempt is not None:
                self._job(self.runtime.kill(task.attempt, message), f"kill {task.attempt.handle}")

    def _request_finalize(self, ns: str, run_id: str) -> None:
        key = (ns, run_id)
        if key in self._finalizing:
            self._finalizing[key] = True  # run it once more after the current pass
            return
        self._finalizing[key] = False
        self._job(self._finalize(ns, run_id), f"finalize cancel of {ns}/{run_id}")

    async def _finalize(self, ns: str, run_id: str) -> None:
        key = (ns, run_id)
        try:
            while True:
                self._finalizing[key] = False
                try:
                    found = await self.progress.read_run(ns, run_id)
                    if found is None:
                        return
                    ref = await self._run_ref(ns, run_id, found[0])
                    if ref is not None:
                        await self.progress.finalize_cancel(ref)
                except ServiceError as error:
                    log.warning("cannot finalize the cancel of %s/%s yet: %s", ns, run_id, error.message)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if not self._finalizing[key]:
                    return
        finally:
            self._finalizing.pop(key, None)

    # Ready marks and claims -----------------------------------------------------------

    async def _scheduling_listed(self, kvs: list[KeyValue]) -> None:
        ready_prefix = self.keyspace.ready_all()
        ks = self.keyspace
        self.queue.reset_ready([ks.parse_ready(kv.key) for kv in kvs if kv.key.startswith(ready_prefix)])
        self.queue.reset_claims(
            [(ks.parse_claim(kv.key), kv.value.decode()) for kv in kvs if not kv.key.startswith(ready_prefix)]
        )

    async def _scheduling_changed(self, events: list[WatchEvent]) -> None:
        # One watch for both prefixes: a release (ready mark and claim deleted in one
        # transaction) arrives as one batch, so the step never looks ready-and-unclaimed.
        ready_prefix = self.keyspace.ready_all()
        ours = self.executor_id.encode()
        for event in events:
            if event.key.startswith(ready_prefix):
                key = self.keyspace.parse_ready(event.key)
                if event.deleted:
                    self.queue.ready_removed(key)
                else:
                    self.queue.ready_added(key)
                continue
            key = self.keyspace.parse_claim(event.key)
            if event.deleted:
                self.queue.unclaimed(key)
                if key[:2] in self.cancelling:
                    # Possibly the last claim of a cancelled run (its executor may have died).
                    self._request_finalize(key[0], key[1])
            elif event.value != ours or self.queue.owner(key) != self.executor_id:
                # Our own claims are in the mirror already (the claim transaction put them).
                self.queue.claimed(key, event.value.decode())

    async def _dispatch(self) -> None:
        while True:
            await self.queue.changed.wait()
            self.queue.changed.clear()
            while self._busy_slots() < self.config.max_parallel:
                await self.registration.valid.wait()
                key = self.queue.pick(self._tasks)
                if key is None:
                    break
                self._start_step(key)

    def _busy_slots(self) -> int:
        """Tasks holding a slot: not those parked waiting for other executors' replicas."""
        return sum(1 for task, _ in self._tasks.values() if not task.parked)

    def _start_step(self, key: StepKey) -> None:
        # The slot is taken before the claim, so claims for several free slots are in
        # flight at once instead of one round trip after the other.
        ns, run_id, step = key
        task = StepTask(Claim(ns, run_id, step, self.registration.lease))
        if (ns, run_id) in self.cancelling:
            task.cancel_reason = self.cancelling[(ns, run_id)] or "cancelled"
            task.cancelled.set()
        runner = asyncio.create_task(
            self._claim_and_work(key, task), name=f"step {'/'.join(key)}", context=_log_context_of(key)
        )
        self._tasks[key] = (task, runner)

    async def _claim_and_work(self, key: StepKey, task: StepTask) -> None:
        try:
            try:
                claimed = await self._claim(task)
            except ServiceError as error:
                # etcd may have applied the claim and only its answer was lost: a claim of
                # ours that nobody works on would hold the step for as long as we live.
                log.warning("cannot claim %s: %s; checking whether it was applied", "/".join(key), error.message)
                await asyncio.sleep(RETRY_SECONDS)  # keeps the slot: no busy loop while etcd is away
                claimed = await self._holds_claim(task)
            if claimed:
                await self._work_on(key, task)
        finally:
            self._tasks.pop(key, None)
            self.queue.changed.set()

    async def _holds_claim(self, task: StepTask) -> bool:
        """Whether the step's claim is ours (our id, bound to the task's lease), asking etcd
        until it answers or the lease changes (then the claim, if any, is gone with it)."""
        claim = task.claim
        claim_key = self.keyspace.claim(claim.namespace, claim.run_id, claim.step)
        while claim.lease == self.registration.lease:
            try:
                kv = await self.store.get(claim_key)
            except ServiceError as error:
                log.warning("cannot read the claim of %s/%s/%s: %s", *claim_parts(claim), error.message)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            ours = kv is not None and kv.value == self.executor_id.encode() and kv.lease == claim.lease
            if kv is not None:
                self.queue.claimed(claim_parts(claim), kv.value.decode())
            return ours
        return False

    async def _sweep_claims(self) -> None:
        """Finds claims of ours that no task works on (a lost answer, a bug) and works on
        them or gives them back, so no step is held by a live executor doing nothing.

        A claim must look orphaned in two sweeps in a row: the mirror lags etcd, and a claim
        a task has just released may still show as ours for a moment.
        """
        suspects: set[StepKey] = set()
        while True:
            await asyncio.sleep(CLAIM_SWEEP_SECONDS)
            orphans = {key for key in self.queue.claimed_by(self.executor_id) if key not in self._tasks}
            for key in orphans & suspects:
                if not self.registration.valid.is_set():
                    break
                task = StepTask(Claim(*key, self.registration.lease))
                runner = asyncio.create_task(
                    self._adopt(key, task), name=f"adopt {'/'.join(key)}", context=_log_context_of(key)
                )
                self._tasks[key] = (task, runner)
            suspects = orphans - suspects

    async def _adopt(self, key: StepKey, task: StepTask) -> None:
        try:
            if not await self._holds_claim(task):
                return
            if self._busy_slots() > self.config.max_parallel:
                log.info("giving back the claim of %s found unattended: no free slot", "/".join(key))
                await self.progress.release_claim(*key, task.claim.lease)
                return
            log.warning(
                "claim of %s was held by this executor with nothing working on it; working on it", "/".join(key)
            )
            if key[:2] in self.cancelling:
                task.cancel_reason = self.cancelling[key[:2]] or "cancelled"
                task.cancelled.set()
            await self._work_on(key, task)
        except ServiceError as error:
            log.warning("cannot take up the unattended claim of %s: %s", "/".join(key), error.message)
        finally:
            self._tasks.pop(key, None)
            self.queue.changed.set()

    async def _claim(self, task: StepTask) -> bool:
        """Claims a step: creates its claim bound to our lease if it has a ready mark and no
        claim. The same transaction reads the step's records into `task.snapshot`."""
        claim = task.claim
        key = (claim.namespace, claim.run_id, claim.step)
        claim_key = self.keyspace.claim(*key)
        ready_key = self.keyspace.ready(*key)
        started = time.monotonic()
        result = await self.store.txn(
            [absent(claim_key), present(ready_key)],
            [op_put(claim_key, self.executor_id.encode(), claim.lease), *self.runner.snapshot_reads(claim)],
            [op_get(claim_key), op_get(ready_key, count_only=True)],
        )
        metrics.claim_finished(time.monotonic() - started, won=result.succeeded)
        if result.succeeded:
            self.queue.claimed(key, self.executor_id)
            task.snapshot = self.runner.snapshot_of(result, 1)
            return True
        self.claims_refused += 1
        holder = result.range_kvs(0)
        if holder:
            self.queue.claimed(key, holder[0].value.decode())
        if result.responses[1].response_range.count == 0:
            self.queue.ready_removed(key)
        return False

    async def _work_on(self, key: StepKey, task: StepTask) -> None:
        delay = RETRY_SECONDS
        while True:
            try:
                await self.runner.run(task)
                return
            except ClaimLost as lost:
                log.info("%s; leaving the step to its new holder", lost)
                return
            except Unavailable as error:
                # etcd or weft-api away (a restart): expected, retried, no traceback.
                log.warning("working on step %s: %s; retrying in %.0fs", "/".join(key), error.message, delay)
            except Exception:
                log.exception("working on step %s failed; retrying in %.0fs", "/".join(key), delay)
            if task.claim.lease != self.registration.lease:
                return  # our lease changed: the claim is gone, someone else has the step
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_STEP_RETRY_SECONDS)
