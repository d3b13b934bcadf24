"""Jaseci's login for `jsorc serve`: `POST /user/token/` with the admin's email and password.

`jsctl login URL -u EMAIL --password PW` posts the form `email=..&password=..` and keeps the
`token` of the answer for `Authorization: token <key>`. jsorc has one user, the admin: the
pair `jsorc serve` was started with (`JSORC_ADMIN_EMAIL`, `JSORC_ADMIN_PASSWORD`), and the
token it answers is the admin token (JSORC_TOKEN). Without the pair the login is off and says
how to turn it on; the token still works.

`AdminCredentials.matches` compares in constant time (both fields, always). `LoginLimiter`
counts failed logins per client address over a sliding window: after `max_failures` in
`window_s` every login from that address (the right pair too) is refused with the seconds to
wait, until the oldest failure leaves the window. Both are pure but for the injected clock.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["ENV_EMAIL", "ENV_PASSWORD", "NOT_CONFIGURED", "AdminCredentials", "LoginLimiter"]

ENV_EMAIL = "JSORC_ADMIN_EMAIL"
ENV_PASSWORD = "JSORC_ADMIN_PASSWORD"
NOT_CONFIGURED = (f"login is off: start `jsorc serve` with {ENV_EMAIL} and {ENV_PASSWORD} "
                  "set to turn on POST /user/token/ (jsctl login); meanwhile send the admin "
                  "token itself: Authorization: token $JSORC_TOKEN")


@dataclass(frozen=True)
class AdminCredentials:
    """The admin's email (compared case-insensitively, as Jaseci stores emails lower-case)
    and password (exactly)."""

    email: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.email.strip() or not self.password:
            raise ValueError(f"the admin email and password must be non-empty "
                             f"({ENV_EMAIL}, {ENV_PASSWORD})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AdminCredentials | None:
        """The pair from the environment; None when neither is set, ValueError when only
        one is (a login that can never succeed is a mistake to report at start-up)."""
        email, password = environ.get(ENV_EMAIL, ""), environ.get(ENV_PASSWORD, "")
        if not email and not password:
            return None
        if not email or not password:
            missing = ENV_PASSWORD if email else ENV_EMAIL
            raise ValueError(f"{missing} is not set while "
                             f"{ENV_EMAIL if email else ENV_PASSWORD} is: set both to turn "
                             "on jsctl login, or neither")
        return cls(email, password)

    def matches(self, email: str, password: str) -> bool:
        """Both compared in constant time, the second even when the first differs."""
        email_ok = hmac.compare_digest(email.strip().casefold().encode(),
                                       self.email.strip().casefold().encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return email_ok & password_ok


class LoginLimiter:
    """At most `max_failures` failed logins per address in any `window_s` seconds."""

    def __init__(self, max_failures: int = 5, window_s: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = 10_000) -> None:
        if max_failures < 1 or not window_s > 0:
            raise ValueError(f"LoginLimiter needs max_failures >= 1 and window_s > 0, got "
                             f"{max_failures}, {window_s}")
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            if len(times) < self.max_failures:
                return 0.0
            return max(times[0] + self.window_s - now, 0.001)

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            if address not in self._failures and len(self._failures) >= self._max_addresses:
                self._forget_stale(now)
            self._recent(address, now).append(now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.setdefault(address, deque(maxlen=self.max_failures))
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def _forget_stale(self, now: float) -> None:
        # Bounded memory under many addresses: drop those with no failure in the window,
        # and if that is not enough, the half that failed longest ago.
        for address in [a for a, t in self._failures.items()
                        if not t or t[-1] <= now - self.window_s]:
            del self._failures[address]
        if len(self._failures) >= self._max_addresses:
            oldest = sorted(self._failures, key=lambda a: self._failures[a][-1])
            for address in oldest[: len(oldest) // 2 + 1]:
                del self._failures[address]
