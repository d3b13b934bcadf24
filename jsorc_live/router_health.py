"""A router's replica health: HTTP checks of every ready replica, and what a death does.

A health thread (one per router, started with its first remote target) asks every ready
replica for its spec over HTTP (`HealthPolicy`: how often, how long, how many failures in a
row). One that fails leaves balancing: a replica of ours is stopped and replaced (the
reconciler sees fewer ready replicas than asked for), an attached server is suspended until
it answers again. A replica whose process exited (`replica_died`, from the backend's
monitor) goes the same way.
"""

from __future__ import annotations

import logging
import threading

from jsorc_live.router_state import RouterState
from jsorc_live.runtime_types import Replica
from jsorc_live.targets import Link, RemoteTarget

log = logging.getLogger(__name__)


class HealthChecks(RouterState):
    """The health half of a Router (see jsorc_live.router)."""

    def replica_died(self, replica: Replica) -> None:
        """A replica's process is gone: take it out of rotation and start a replacement."""
        self._take_out(replica, "replica_died", replica.url)

    def _take_out(self, replica: Replica, kind: str, detail: str) -> None:
        """Take a replica of ours out of balancing, stop it and let the reconciler replace
        it (one place decides replica counts, so a death never doubles a start)."""
        with self._cond:
            found = None
            for target in self._targets():
                if isinstance(target, RemoteTarget):
                    for link in target.links:
                        if link.replica == replica and not link.dead:
                            link.dead, found = True, (target, link)
            if found is None:
                return
            target, link = found
            self._signals.replica_retiring(self.name, replica.url)
            self._event(kind, detail)
            target.links.remove(link)
            if target is self._active and not target.attached and not target.retiring:
                self._kick()
            self._cond.notify_all()
        # It may still be running (frozen rather than dead): stop it.
        threading.Thread(target=self._stop_replica, args=(replica,), daemon=True).start()

    # ----------------------------------------------------------------- health

    def _ensure_checker(self) -> None:
        """Start the health thread (called holding the condition); it ends by itself once
        no remote target is active."""
        if self._checker is None and not self._closed:
            self._checker = threading.Thread(target=self._check_loop,
                                             name=f"health-{self.name}", daemon=True)
            self._checker.start()

    def _check_loop(self) -> None:
        while not self._stop.wait(self._health.interval_s):
            with self._cond:
                if not isinstance(self._active, RemoteTarget):
                    self._checker = None
                    return
            try:
                self.check_health()
            except Exception:  # a check must never end the loop
                log.exception("health check of %s", self.name)

    def check_health(self) -> None:
        """One round: ask every ready (or suspended) replica of the active target whether it
        answers, and act on those that did not (see HealthPolicy)."""
        with self._cond:
            active = self._active
            links = active.checked if isinstance(active, RemoteTarget) else []
        for link in links:
            self._record_check(link, self._answers(link.replica))

    def _answers(self, replica: Replica) -> bool:
        try:
            if replica.owned and self._replicas is not None:
                return self._replicas.healthy(replica)
            return self._probe(replica.url, self._health.timeout_s)
        except Exception:
            log.exception("checking %s", replica.url)
            return False

    def _record_check(self, link: Link, ok: bool) -> None:
        with self._cond:
            if link.dead or link.retiring:
                return
            if ok:
                link.failures = 0
                if link.suspended:
                    link.suspended = False
                    self._signals.replica_ready(self.name, link.replica.url)
                    self._event("replica_recovered", link.replica.url)
                    self._cond.notify_all()
                return
            link.failures += 1
            if link.failures < self._health.failures:
                return
            detail = (f"{link.replica.url} failed {link.failures} health checks in a row "
                      f"({self._health.timeout_s:g} s each)")
            if not link.replica.owned:
                if not link.suspended:
                    link.suspended = True
                    self._signals.replica_retiring(self.name, link.replica.url)
                    self._event("replica_suspended", detail)
                return
        self._take_out(link.replica, "replica_unhealthy", detail)
