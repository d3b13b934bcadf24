"""`remote.TokenQueue` against the `simpy.Store` it replaces: the same script of calls taking,
holding, giving up and giving back replica tokens must give the same log, event for event.

Times are small integers, so that many things happen at the same instant: the order of
simultaneous events is where a cheaper queue could drift from the Store's (and with it the
order of rows and of the observation's sums).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from jsorc_sim.remote import TokenQueue

Log = list[tuple[float, str, str, Any]]
# (start, hold, patience or None): a call queues at `start`, holds its token for `hold`, and
# gives up waiting after `patience` (an interrupt, as out-of-memory does).
Call = tuple[int, int, int | None]


def _run(make: Callable[[simpy.Environment], Any], cancel: Callable[[Any, Any], None],
         calls: list[Call], supply: list[tuple[int, int]]) -> tuple[Log, int, int]:
    env = simpy.Environment()
    queue = make(env)
    log: Log = []
    waiting: dict[str, bool] = {}

    def call(name: str, start: int, hold: int) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(start)
        log.append((env.now, name, "asks", None))
        get = queue.get()
        waiting[name] = True
        try:
            token = yield get
        except simpy.Interrupt:
            if get.triggered:  # granted, not resumed yet: the token goes back
                log.append((env.now, name, "gives back", get.value))
                queue.put(get.value)
            else:
                cancel(queue, get)
                log.append((env.now, name, "gives up", None))
            return
        finally:
            waiting[name] = False
        log.append((env.now, name, "takes", token))
        yield env.timeout(hold)
        log.append((env.now, name, "returns", token))
        queue.put(token)

    def impatience(name: str, process: simpy.Process,
                   after: int) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(after)
        if waiting.get(name) and process.is_alive:
            log.append((env.now, name, "interrupted", None))
            process.interrupt()

    def replica(at: int, token: int) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(at)
        log.append((env.now, "replica", "adds", token))
        queue.put(token)

    for at, token in supply:
        env.process(replica(at, token))
    for i, (start, hold, patience) in enumerate(calls):
        name = f"call{i}"
        process = env.process(call(name, start, hold))
        if patience is not None:
            env.process(impatience(name, process, start + patience))
    env.run()
    return log, len(queue.items), len(queue.get_queue)


def _store_cancel(_queue: Any, get: Any) -> None:
    get.cancel()


def _tokens_cancel(queue: Any, get: Any) -> None:
    queue.cancel(get)


calls_strategy = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 4), st.none() | st.integers(0, 5)),
    min_size=1, max_size=25)
supply_strategy = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3)), min_size=1,
                           max_size=6)


@settings(max_examples=300, deadline=None)
@given(calls=calls_strategy, supply=supply_strategy)
def test_same_log_as_a_simpy_store(calls: list[Call], supply: list[tuple[int, int]]) -> None:
    store = _run(simpy.Store, _store_cancel, calls, supply)
    tokens = _run(TokenQueue, _tokens_cancel, calls, supply)
    assert tokens == store


def test_a_token_put_back_first_is_taken_first() -> None:
    """Two calls wait; replicas 1 then 0 free a core at the same instant: the first waiting
    call gets replica 1's token (FIFO on both sides), as the Store would give it."""
    calls: list[Call] = [(1, 1, None), (1, 1, None)]
    supply = [(2, 1), (2, 0)]
    log, idle, waiting = _run(TokenQueue, _tokens_cancel, calls, supply)
    taken = [(name, token) for _, name, what, token in log if what == "takes"]
    assert taken == [("call0", 1), ("call1", 0)]
    assert (idle, waiting) == (2, 0)
