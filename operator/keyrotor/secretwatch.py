"""Noticing a deleted or hand-edited Secret without reading Secrets: a metadata-only watch.

Nothing reads a Secret while its RotatingSecret is Idle, and a GET per object per loop would
cost ten thousand reads an hour at ten thousand objects. Instead one watch per watched
namespace (one cluster-wide without ``--namespace``) follows the Secrets keyrotor manages:

* server-side label selector ``app.kubernetes.io/managed-by=keyrotor``, so unrelated Secrets
  (512 KiB each, say) never reach the process;
* ``Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1`` on the list and the
  watch: the API server sends metadata only, so no Secret data ever enters through the watch;
* it resumes from the last resourceVersion (bookmarks keep it fresh) and lists again on 410.

Per Secret :class:`SecretCache` keeps a resourceVersion and the three version annotations
(a few dozen bytes), and per Secret the last resourceVersion keyrotor wrote or checked itself
(``trusted``). A Secret deleted, or changed to a resourceVersion keyrotor did not write, wakes
its RotatingSecret (label ``keyrotor.io/rotatingsecret``); the reconciler compares the cached
view with the state it is about to act on (:meth:`SecretCache.suspect`, in memory) and only
then GETs the Secret and judges it. What the first list shows is trusted as long as its
version annotations match the status: a restart costs no GET per object, so a value edited
while no keyrotor ran (annotations untouched) is noticed at the next write of that Secret.

The watch runs in a thread with keyrotor's synchronous client (``KubeApi.core``'s two Secret
list calls, on :mod:`keyrotor.kubehttp`; the official ``CoreV1Api`` answers the same calls, which
tests use), one connection per namespace;
every change reaches the cache on the event loop through ``loop.call_soon_threadsafe``.
The cache itself takes a lock: reconcilers record their writes from worker threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from keyrotor.publishing.secret import ANNOTATION_PREFIX, MANAGED_BY, SLOTS

log = logging.getLogger("keyrotor.secretwatch")
Key = tuple[str, str]  # namespace, name
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
OWNER_LABEL = ANNOTATION_PREFIX + "rotatingsecret"
WATCH_TIMEOUT = 300  # seconds the server keeps one watch open
# One page of the list: the API server gives up on a request after 60 s (--request-timeout),
# so wait a little longer than that. The usual 5 s read timeout was too short where a page
# is read from etcd past many large unrelated Secrets (a label selector filters after the
# read): 10,000 of 512 KiB made every list time out, and the watch never started.
LIST_TIMEOUT = (10.0, 75.0)
RETRY = (1.0, 30.0)  # after an error: first wait, ceiling (doubling in between)


@dataclass(frozen=True, slots=True)
class SecretView:
    """What keyrotor keeps of one Secret: no data, no fingerprints."""

    resource_version: str
    versions: tuple[tuple[str, int], ...]  # (slot, version) from the annotations
    owner: str | None  # the RotatingSecret's name (label)

    @classmethod
    def of(cls, meta: dict[str, Any]) -> SecretView:
        annotations = meta.get("annotations") or {}
        versions = []
        for slot in SLOTS:
            text = str(annotations.get(f"{ANNOTATION_PREFIX}{slot}-version", ""))
            if text.isdigit():
                versions.append((slot, int(text)))
        return cls(str(meta.get("resourceVersion", "")), tuple(versions),
                   (meta.get("labels") or {}).get(OWNER_LABEL))


@dataclass
class SecretCache:
    """The cached view of keyrotor's Secrets and what keyrotor wrote itself.

    ``wake(namespace, rotating_secret_name)`` is called on the event loop for a Secret deleted
    or changed by someone else (``loop`` set: calls from threads are handed to it)."""

    wake: Callable[[Key], None] = lambda key: None
    loop: asyncio.AbstractEventLoop | None = None
    views: dict[Key, SecretView] = field(default_factory=dict)
    trusted: dict[Key, str] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)  # namespaces listed once ("" = all)
    _writing: dict[Key, bool] = field(default_factory=dict)  # key -> event seen meanwhile
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- what the watch tells -------------------------------------------------------------

    def observe(self, kind: str, meta: dict[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) about a Secret's metadata."""
        key: Key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        view = SecretView.of(meta)
        with self._lock:
            if kind == "DELETED":
                old = self.views.pop(key, None)
                self.trusted.pop(key, None)
                owner = (old.owner if old else None) or view.owner
                foreign = True
            else:
                self.views[key] = view
                owner = view.owner
                foreign = self.trusted.get(key) != view.resource_version
                if key in self._writing:  # our own write may be this one: judged on return
                    self._writing[key] = True
                    foreign = False
        if foreign and owner:
            self._wake((key[0], owner))

    def replace(self, namespace: str, items: Sequence[dict[str, Any]]) -> None:
        """A full list of ``namespace`` ("" = every namespace): the first one is trusted where
        its annotations match the status (see the module docstring); later ones (after 410)
        wake the owners of what changed or went away in the gap."""
        fresh = {(str(m.get("namespace", "")), str(m.get("name", ""))): SecretView.of(m)
                 for m in items}
        woken: set[Key] = set()
        with self._lock:
            first = namespace not in self.synced
            mine = [k for k in self.views if not namespace or k[0] == namespace]
            for key in mine:
                if key not in fresh:
                    old = self.views.pop(key)
                    self.trusted.pop(key, None)
                    if old.owner:
                        woken.add((key[0], old.owner))
            for key, view in fresh.items():
                before = self.views.get(key)
                self.views[key] = view
                if first:
                    self.trusted[key] = view.resource_version
                elif (before is None or before.resource_version != view.resource_version) \
                        and self.trusted.get(key) != view.resource_version and view.owner:
                    woken.add((key[0], view.owner))
            self.synced.add(namespace)
        for owner in woken:
            self._wake(owner)

    # ---- what reconcilers tell and ask ------------------------------------------------------

    def writing(self, key: Key) -> None:
        """keyrotor is about to write this Secret (from any thread)."""
        with self._lock:
            self._writing[key] = False

    def wrote(self, key: Key, resource_version: str | None, owner: str) -> None:
        """keyrotor's write of this Secret ended (``None``: it failed) (from any thread)."""
        with self._lock:
            seen = self._writing.pop(key, False)
            if resource_version:
                self.trusted[key] = resource_version
            view = self.views.get(key)
            # An event arrived during the write and it is not the write's own: someone else's.
            foreign = seen and view is not None and view.resource_version != resource_version
        if foreign:
            self._wake((key[0], owner))

    def checked(self, key: Key, resource_version: str) -> None:
        """keyrotor read this Secret and found it as it should be."""
        with self._lock:
            self.trusted[key] = resource_version

    def suspect(self, key: Key, expected: dict[str, int]) -> str | None:
        """Why this Secret should be read afresh, or None: the watch shows it as keyrotor left
        it. ``expected`` is what the status says it holds (slot -> version). In memory."""
        namespace = key[0]
        with self._lock:
            if "" not in self.synced and namespace not in self.synced:
                return None  # not listed yet: nothing known
            view = self.views.get(key)
            if view is None:
                return "the Secret is gone"
            if dict(view.versions) != expected:
                return "its version annotations changed"
            if self.trusted.get(key) != view.resource_version:
                return "someone else wrote it"
        return None

    def _wake(self, key: Key) -> None:
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            loop.call_soon_threadsafe(self.wake, key)
        else:
            self.wake(key)


# ---- the watch itself ----------------------------------------------------------------------


class Gone(Exception):
    """The resourceVersion is too old (HTTP 410): list again."""


def _request(core: Any, namespace: str, **kwargs: Any) -> Any:
    """One list or watch of keyrotor's Secrets, metadata only (see the module docstring)."""
    accept = METADATA_ONLY if kwargs.get("watch") else METADATA_LIST
    common = {"label_selector": SELECTOR, "_headers": {"Accept": accept},
              "_preload_content": False, **kwargs}
    if namespace:
        return core.list_namespaced_secret(namespace, **common)
    return core.list_secret_for_all_namespaces(**common)


_KEPT = ("name", "namespace", "resourceVersion", "labels", "annotations")


def _slim(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata :class:`SecretView` reads, without managedFields and the rest (a few
    kilobytes per Secret: ten thousand of them were 38 MB)."""
    return {k: meta[k] for k in _KEPT if k in meta}


def list_metadata(core: Any, namespace: str) -> tuple[list[dict[str, Any]], str]:
    """Every Secret of keyrotor's in ``namespace`` ("" = all): metadata (what the cache
    reads of it) and the list's resourceVersion. Pages of 500."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = json.loads(_request(core, namespace, limit=500, _request_timeout=LIST_TIMEOUT,
                                   **({"_continue": token} if token else {})).data)
        items += [_slim(item.get("metadata") or {}) for item in page.get("items") or ()]
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items, str(page["metadata"]["resourceVersion"])


def watch_events(core: Any, namespace: str, resource_version: str,
                 timeout: int = WATCH_TIMEOUT,
                 opened: Callable[[Any], None] = lambda response: None,
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, metadata) of each event from ``resource_version`` on, until the server ends the
    watch; bookmarks come as ("BOOKMARK", metadata). Raises :class:`Gone` on 410. ``opened``
    gets the streaming response (so that a stop can shut it down)."""
    response = _request(core, namespace, watch=True, resource_version=resource_version,
                        allow_watch_bookmarks=True, timeout_seconds=timeout,
                        _request_timeout=(10, timeout + 30))
    opened(response)
    try:
        for line in _lines(response):
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone(obj.get("message", "410"))
                raise RuntimeError(f"watch error: {obj.get('message')}")
            yield str(kind), obj.get("metadata") or {}
    finally:
        response.release_conn()


def _lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(4096, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


@dataclass
class SecretWatch:
    """Feeds a :class:`SecretCache` from one metadata-only watch per namespace, in threads."""

    cache: SecretCache
    core: Any  # KubeApi.core (keyrotor.kubehttp), or an official CoreV1Api
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _open: dict[str, Any] = field(default_factory=dict)  # namespace -> streaming response

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.cache.loop = loop
        for namespace in self.namespaces or ("",):
            thread = threading.Thread(target=self._run, args=(namespace,), daemon=True,
                                      name=f"keyrotor-secretwatch-{namespace or 'all'}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop: shut the open streams down, so each thread's blocked read returns now."""
        self._stop.set()
        for response in list(self._open.values()):
            shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3
            if shutdown is not None:
                try:
                    shutdown()
                except Exception as exc:  # already closed, say: nothing more to stop
                    log.debug("closing a Secret watch: %s", exc)

    def _run(self, namespace: str) -> None:
        loop = self.cache.loop
        assert loop is not None
        version: str | None = None
        wait = RETRY[0]
        while not self._stop.is_set():
            try:
                if version is None:
                    items, version = list_metadata(self.core, namespace)
                    loop.call_soon_threadsafe(self.cache.replace, namespace, items)
                    # Not kept here for the life of the watch (the cache keeps a small view).
                    del items
                for kind, meta in watch_events(
                        self.core, namespace, version,
                        opened=lambda response: self._open.__setitem__(namespace, response)):
                    if self._stop.is_set():
                        return
                    version = str(meta.get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        loop.call_soon_threadsafe(self.cache.observe, kind, meta)
                wait = RETRY[0]
            except Gone:
                version = None  # too old: list again (and wake what changed in the gap)
            except Exception as exc:  # the API server away: retry, slowly
                if self._stop.is_set():
                    return
                status = getattr(exc, "status", None)
                why = f"HTTP {status} {getattr(exc, 'reason', '')}" if status else \
                    f"{type(exc).__name__}: {exc}"
                log.warning("watching Secrets%s failed (%s); deleted or edited Secrets go "
                            "unnoticed until it works; retrying in %.0fs",
                            f" in namespace {namespace}" if namespace else "", why, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, RETRY[1])
