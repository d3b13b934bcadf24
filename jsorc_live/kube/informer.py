"""List-then-watch of one kind into a cache, in a thread (client-go's informer, reduced).

The thread lists (replacing the cache at once), then watches from the list's
resourceVersion, applying ADDED/MODIFIED/DELETED events and calling `on_change` after each
change. A 410 (the version expired) re-lists at once; any other failure is logged once
(`ErrorLog`) and re-lists after a backoff with jitter. A server without watch support
degrades to polling: a watch that ends at once is followed by a pause, then a list.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from jsorc_live.kube.client import FailureKind, backoff, classify
from jsorc_live.kube.cluster import EventStream
from jsorc_live.kube.manifests import name_of

log = logging.getLogger(__name__)

Lister = Callable[[], dict[str, Any]]
Watcher = Callable[[str, int], EventStream]  # (resourceVersion, timeout_s) -> events


class ErrorLog:
    """Logs each resource's error once: again only when its message changes, and once more
    when it recovers."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()

    def failed(self, key: str, message: str) -> None:
        with self._lock:
            if self._last.get(key) == message:
                return
            self._last[key] = message
        self._log.warning("%s", message)

    def ok(self, key: str) -> None:
        with self._lock:
            was = self._last.pop(key, None)
        if was is not None:
            self._log.warning("%s: recovered", key)

    def last(self, key: str) -> str | None:
        with self._lock:
            return self._last.get(key)


class Informer:
    """A cache of one kind by name, kept by a list-then-watch thread."""

    def __init__(self, kind: str, lister: Lister, watcher: Watcher, *, namespace: str,
                 server: str, on_change: Callable[[], None], errors: ErrorLog,
                 watch_s: int = 60, poll_s: float = 1.0, rand: random.Random | None = None
                 ) -> None:
        self.kind = kind
        self._list = lister
        self._watch = watcher
        self._namespace = namespace
        self._server = server
        self._on_change = on_change
        self._errors = errors
        self._watch_s = watch_s
        self._poll_s = poll_s
        self._rand = rand or random.Random(0)
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: EventStream | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # set once the first list has landed
        self.lists = 0  # how many lists were made (a re-list after a 410 counts)

    def items(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._items)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.stop()  # shuts the watch's socket: the thread's read returns
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        failures = 0
        key = f"{self.kind} list/watch"
        while not self._stop.is_set():
            try:
                version = self._relist()
                self._errors.ok(key)
                failures = 0
                started = time.monotonic()
                changed = self._follow(version)
                if not changed and time.monotonic() - started < self._poll_s:
                    self._stop.wait(self._poll_s)  # no watch here: poll by listing
            except Exception as exc:  # nothing may end the thread but stop()
                if self._stop.is_set():
                    return
                failure = classify(exc, verb="list/watch", resource=self.kind,
                                   namespace=self._namespace, server=self._server)
                if failure.kind is FailureKind.RELIST:
                    log.info("%s: watch expired, listing again", self.kind)
                    continue
                self._errors.failed(key, failure.message)
                self._stop.wait(backoff(failures, self._rand, cap_s=5.0))
                failures += 1

    def _relist(self) -> str:
        answer = self._list()
        items = {name_of(item): item for item in answer.get("items") or []
                 if isinstance(item, dict)}
        with self._lock:
            self._items = items
        self.lists += 1
        self.synced.set()
        self._on_change()
        version = (answer.get("metadata") or {}).get("resourceVersion")
        return str(version or "")

    def _follow(self, version: str) -> bool:
        """Apply watch events until the watch ends; True if any arrived."""
        changed = False
        self._stream = self._watch(version, self._watch_s)
        try:
            for event in self._stream:
                if self._stop.is_set():
                    break
                kind, obj = event.get("type"), event.get("object")
                if kind == "ERROR":
                    code = obj.get("code") if isinstance(obj, dict) else None
                    if code == 410:
                        log.info("%s: watch expired, listing again", self.kind)
                        return changed
                    raise RuntimeError(f"watch error: {obj}")
                if not isinstance(obj, dict) or kind == "BOOKMARK":
                    continue
                name = name_of(obj)
                with self._lock:
                    if kind == "DELETED":
                        self._items.pop(name, None)
                    else:
                        self._items[name] = obj
                changed = True
                self._on_change()
        finally:
            self._stream = None
        return changed
