"""ACTION_CONFIGS of the fault suite (`jsorc serve --config tests.reliability.fault_config`).

Plain mappings, not ActionConfig objects, so that the server reads them through
ActionConfig.from_dict: a key that version of the config does not know yet (call_timeout_s,
idempotent while the router work is in flight) is then simply not applied, instead of
stopping the server at start. The deadlines are short so a fault costs seconds, not minutes.
"""

from __future__ import annotations

from typing import Any

MODULE = "tests.reliability.fault_actions"

#: Deadline of one call of each action, in seconds (ActionConfig.call_timeout_s).
FAST_DEADLINE_S = 3.0
HANG_DEADLINE_S = 2.0
SLOW_DEADLINE_S = 20.0

ACTION_CONFIGS: dict[str, dict[str, Any]] = {
    # The loadtest's action: a few ms per call, moved and scaled under load.
    "fast": {"module": MODULE, "local_memory_mb": 1, "remote_memory_mb": 60,
             "call_timeout_s": FAST_DEADLINE_S, "idempotent": False},
    # Local, with a short deadline: a call told to sleep an hour must fail at 2 s.
    "hang": {"module": MODULE, "local_memory_mb": 1, "remote_memory_mb": 60,
             "call_timeout_s": HANG_DEADLINE_S, "idempotent": False},
    # The 45 slow walkers' action (2 s a call): its deadline is well above that.
    "slow": {"module": MODULE, "local_memory_mb": 1, "remote_memory_mb": 60,
             "call_timeout_s": SLOW_DEADLINE_S, "idempotent": False},
}
