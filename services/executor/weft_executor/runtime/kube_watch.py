"""One list+watch of weft's step pods per executor, dispatched to the attempts waiting on them.

`PodWatcher` runs a single thread that lists the pods of one namespace that carry
`app.kubernetes.io/managed-by=weft`, then watches them from the list's resourceVersion:

- a dropped or timed-out stream is re-opened from the last resourceVersion seen (events or
  bookmarks), so nothing is missed and nothing is listed again;
- `410 Gone` (an ERROR event, or the status of the request) means that version is too old:
  list again, and report every pod that vanished meanwhile as deleted;
- any other failure (API server restarting, 5xx) is retried with backoff from the same
  version.

Events are applied on the event loop's thread (`call_soon_threadsafe`), which owns the
cache (`pods`, by name) and the subscriptions: each `PodSubscription` holds the newest
state of one pod (by uid; older resourceVersions never overwrite newer ones) and an
`asyncio.Event` set on every change, so attempts never poll the API one pod at a time.

This module never creates, changes or deletes a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weft_executor.runtime.kube_client import JSON, KubeApi, KubeError, KubeUnavailable
from weft_executor.runtime.kube_pods import resource_version

log = logging.getLogger(__name__)

#: Seconds the API server keeps one watch request open (it ends it then; we re-open it).
WATCH_SECONDS = 240
#: Backoff between failed list/watch requests.
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 5.0


@dataclass(eq=False)  # compared and hashed by identity: subscriptions live in sets
class PodSubscription:
    """The newest known state of one pod, for the attempt that waits on it.

    Attributes:
        name: The pod's name.
        uid: The pod's uid once known; events of another pod with the same name are ignored.
        pod: The newest pod JSON, or None before the first sighting.
        gone: The pod was deleted (a DELETED event, or absent from a newer list).
        changed: Set on every change; the waiter clears it before looking.
    """

    name: str
    uid: str = ""
    pod: JSON | None = None
    gone: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, pod: JSON) -> None:
        """Takes `pod` if it is this subscription's pod and newer than what it has."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if self.uid and uid and uid != self.uid:
            return
        if self.pod is not None and resource_version(pod) < resource_version(self.pod):
            return
        if not self.uid:
            self.uid = uid
        self.pod = pod
        self.changed.set()

    def delete(self, pod: JSON) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if self.uid and uid and uid != self.uid:
            return
        self.pod = pod
        self.gone = True
        self.changed.set()


@dataclass
class WatchStats:
    """Counters of the watch loop, for tests and logs."""

    lists: int = 0
    watches: int = 0
    gone: int = 0
    errors: int = 0
    last_error: str = ""


class PodWatcher:
    """The list+watch loop of one namespace (see the module docstring).

    Args:
        api: The rate-limited API client.
        namespace: The Kubernetes namespace of the step pods.
        selector: The label selector of the pods to watch.
        loop: The event loop that owns the cache and the subscriptions.
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        selector: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.selector = selector
        self.loop = loop
        #: Pods by name, as of the newest event (owned by the loop's thread).
        self.pods: dict[str, JSON] = {}
        #: Set once the first list is applied.
        self.synced = asyncio.Event()
        self.stats = WatchStats()
        #: The resourceVersion the next watch starts from (None: list first).
        self.version: str | None = None
        self._subscriptions: dict[str, set[PodSubscription]] = {}
        self._stopping = threading.Event()
        self._stream: Any = None
        self._stream_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"weft-pod-watch-{namespace}", daemon=True)

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the loop: closes the open stream and joins the thread."""
        self._stopping.set()
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # Subscriptions (loop thread) ------------------------------------------------------

    def subscribe(self, name: str, uid: str = "", pod: JSON | None = None) -> PodSubscription:
        """Follows pod `name` (with `uid` when known), starting from `pod` or the cache."""
        subscription = PodSubscription(name=name, uid=uid)
        for known in (pod, self.pods.get(name)):
            if known is not None:
                subscription.offer(known)
        self._subscriptions.setdefault(name, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: PodSubscription) -> None:
        subscribers = self._subscriptions.get(subscription.name)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscriptions[subscription.name]

    # Applying events (loop thread) ----------------------------------------------------

    def _apply(self, kind: str, pod: JSON) -> None:
        name = str(pod["metadata"]["name"])
        if kind == "DELETED":
            self.pods.pop(name, None)
            for subscription in list(self._subscriptions.get(name, ())):
                subscription.delete(pod)
            return
        current = self.pods.get(name)
        if current is None or resource_version(pod) >= resource_version(current) or _uid(pod) != _uid(current):
            self.pods[name] = pod
        for subscription in list(self._subscriptions.get(name, ())):
            subscription.offer(pod)

    def _apply_list(self, items: list[JSON], version: int) -> None:
        listed = {str(pod["metadata"]["name"]): pod for pod in items}
        for name, old in list(self.pods.items()):
            if name not in listed:
                self._apply("DELETED", old)
        for pod in listed.values():
            self._apply("MODIFIED", pod)
        # A pod created, then deleted between two watches was never in the cache: a list
        # newer than what its subscriber knows, without it, means it is gone.
        for name, subscribers in list(self._subscriptions.items()):
            if name in listed:
                continue
            for subscription in list(subscribers):
                known = resource_version(subscription.pod) if subscription.pod is not None else -1
                if not subscription.gone and 0 <= known < version:
                    subscription.delete(subscription.pod or {"metadata": {"name": name}})
        self.synced.set()

    def _post(self, function: Callable[..., None], *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: the executor is gone
            self._stopping.set()
            return False
        return True

    # The thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._stopping.is_set():
            try:
                if self.version is None:
                    self.version = self._list()
                if not self._watch():
                    self.version = None  # 410 Gone: too old to resume from
                backoff = FIRST_BACKOFF
            except KubeError as error:
                if self._stopping.is_set():
                    return
                if error.status == 410:
                    self.stats.gone += 1
                    log.info("pod watch in %s: %s; listing again", self.namespace, error.message or "410 Gone")
                    self.version = None
                    continue
                self._failed(f"{error}", backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except (KubeUnavailable, OSError, ValueError) as error:
                # Resumed from `self.version`, the last one seen: nothing missed, nothing listed.
                if self._stopping.is_set():
                    return
                self._failed(f"{error}", backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as error:  # never let the only watch die silently
                if self._stopping.is_set():
                    return
                log.exception("pod watch in %s failed unexpectedly", self.namespace)
                self._failed(repr(error), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _failed(self, error: str, backoff: float) -> None:
        self.stats.errors += 1
        self.stats.last_error = error
        log.warning("pod watch in %s: %s; retrying in %.1fs", self.namespace, error, backoff)
        self._stopping.wait(backoff)

    def _list(self) -> str:
        listing = self.api.request_sync("GET", self.path, query=[("labelSelector", self.selector)])
        self.stats.lists += 1
        version = str(listing["metadata"]["resourceVersion"])
        try:
            number = int(version)
        except ValueError:
            number = -1
        self._post(self._apply_list, list(listing.get("items") or []), number)
        return version

    def _watch(self) -> bool:
        """Follows one watch request from `self.version`, advancing it with every event.

        Returns False when the version expired (410 Gone: list again), True when the
        server ended the request normally (resume from `self.version`).
        """
        import urllib3

        assert self.version is not None
        query = [
            ("labelSelector", self.selector),
            ("watch", "true"),
            ("resourceVersion", self.version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", WATCH_SECONDS),
        ]
        stream = self.api.open_stream(self.path, query=query, read_timeout=WATCH_SECONDS + 30)
        self.stats.watches += 1
        with self._stream_lock:
            self._stream = stream
        try:
            if self._stopping.is_set():
                return True
            for line in stream:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 0)
                    if code == 410:
                        self.stats.gone += 1
                        log.info("pod watch in %s expired (%s); listing again", self.namespace, obj.get("message"))
                        return False
                    raise KubeError(code, str(obj.get("reason") or ""), str(obj.get("message") or obj))
                self.version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
                if kind in ("ADDED", "MODIFIED", "DELETED") and not self._post(self._apply, kind, obj):
                    return True
            return True
        except (urllib3.exceptions.HTTPError, OSError) as error:
            if self._stopping.is_set():
                return True
            raise KubeUnavailable(f"the pod watch broke off: {error}") from None
        finally:
            with self._stream_lock:
                self._stream = None
            # close, not release: a half-read stream must not go back into the pool.
            stream.close()


def _uid(pod: JSON) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")
