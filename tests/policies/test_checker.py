"""`check_policy`: every registered policy passes it; broken policies are caught by name."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import pytest

import policies
from policies import (
    Decision,
    Mode,
    NoParams,
    Observation,
    Placement,
    check_policy,
    param,
)
from policies.checker import Check, PolicyCheckError, synthetic_observations, with_new_action


@pytest.mark.parametrize("name", policies.names())
def test_every_registered_policy_passes(name: str) -> None:
    check_policy(policies.make(name))


def test_a_guarded_policy_wearing_every_guard_passes() -> None:
    check_policy(policies.make("guarded", {
        "policy": "all_local",
        "guards": {"memory_cap": {}, "stabilisation": {"window_s": 30},
                   "replica_bounds": {"max_replicas": 2}, "cooldown": {"cooldown_s": 20},
                   "max_changes": {"max_changes": 2}},
    }))


# ----------------------------------------------------------------------------- broken policies


class Base:
    """A well-behaved policy: every action it sees local. Subclasses each break one rule."""

    Params = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        return Decision({a: Placement.local() for a in observation.actions}, "all local")


class ReadsTime(Base):
    def decide(self, observation: Observation) -> Decision:
        if time.time() > 0:
            return super().decide(observation)
        return Decision.keep()


class ReadsImportedPerfCounter(Base):
    def decide(self, observation: Observation) -> Decision:
        perf_counter()
        return super().decide(observation)


class ReadsDatetime(Base):
    def decide(self, observation: Observation) -> Decision:
        reason = f"decided at {datetime.datetime.now():%H}"
        return Decision({}, reason[:0])


class ReadsClockInReset(Base):
    def reset(self, seed: int) -> None:
        self.started = time.monotonic()


class ReadsClockLate(Base):
    """Reads the clock only once traffic is heavy: the error names that observation's time."""

    def decide(self, observation: Observation) -> Decision:
        if observation.totals.requests > 200:
            time.time_ns()
        return super().decide(observation)


class OpensAFile(Base):
    def decide(self, observation: Observation) -> Decision:
        with open(os.devnull) as f:
            f.read()
        return super().decide(observation)


class Prints(Base):
    def decide(self, observation: Observation) -> Decision:
        print("deciding", file=sys.stderr)
        return super().decide(observation)


class SharedRandom(Base):
    def reset(self, seed: int) -> None:
        random.seed(seed)

    def decide(self, observation: Observation) -> Decision:
        return Decision({a: Placement.local() if random.random() < 0.5 else Placement.remote(1)
                         for a in observation.actions})


class Unseeded(Base):
    """Its own generator, but not seeded from `reset`: every run differs."""

    def reset(self, seed: int) -> None:
        self.rng = random.Random()

    def decide(self, observation: Observation) -> Decision:
        return Decision({a: Placement.remote(self.rng.randint(1, 1000))
                         for a in observation.actions})


class ClassState(Base):
    """Counts on the class (global state): a fresh instance sees another count."""

    decided = 0

    def decide(self, observation: Observation) -> Decision:
        ClassState.decided += 1
        return Decision({}, f"decision {ClassState.decided}")


class ForgetsToReset(Base):
    def __init__(self, params: NoParams | None = None) -> None:
        super().__init__(params)
        self.count = 0

    def decide(self, observation: Observation) -> Decision:
        self.count += 1
        return Decision({}, f"decision {self.count}")


class ReturnsADict(Base):
    def decide(self, observation: Observation) -> Decision:
        return {a: "local" for a in observation.actions}  # type: ignore[return-value]


class NamesAnUnknownAction(Base):
    def decide(self, observation: Observation) -> Decision:
        return Decision({"ghost": Placement.local()})


class SmuggledPlacement(Base):
    """Gets a bad value past Decision's own check by mutating the mapping afterwards."""

    def decide(self, observation: Observation) -> Decision:
        placements: dict[str, Any] = {}
        decision = Decision(placements)
        for a in observation.actions:
            placements[a] = "local"
        return decision


class RaisesOnEmpty(Base):
    def decide(self, observation: Observation) -> Decision:
        biggest = max(observation.actions.values(), key=lambda s: s.local_memory_mb)
        return Decision({biggest.name: Placement.remote(1)})


class RaisesLater(Base):
    def decide(self, observation: Observation) -> Decision:
        if observation.node.oom_events:
            raise ValueError("did not expect an out-of-memory")
        return super().decide(observation)


class KnowsOnlyItsFirstActions(Base):
    """Remembers the actions of its first busy observation and indexes them blindly."""

    def reset(self, seed: int) -> None:
        self.sizes: dict[str, float] = {}

    def decide(self, observation: Observation) -> Decision:
        if not self.sizes and observation.actions:
            self.sizes = {a: s.local_memory_mb for a, s in observation.actions.items()}
        total = sum(self.sizes[a] for a in observation.actions)
        return Decision({}, f"{total:.0f} MB")


@dataclass
class MutableParams:
    replicas: int = param(1, "replicas")


class NotFrozen(Base):
    Params = MutableParams  # type: ignore[assignment]

    def __init__(self, params: MutableParams | None = None) -> None:
        self.params = params or MutableParams()  # type: ignore[assignment]


class DictParams(Base):
    def __init__(self, params: Any = None) -> None:
        self.params = {"replicas": 1}  # type: ignore[assignment]


class NoDecide:
    params = NoParams()

    def reset(self, seed: int) -> None:
        pass


@pytest.mark.parametrize(
    ("policy", "check", "message"),
    [
        (ReadsTime, Check.NO_CLOCK, r"at t=0 s: decide\(\) called time.time \(at test_checker"),
        (ReadsImportedPerfCounter, Check.NO_CLOCK, "called time.perf_counter"),
        (ReadsDatetime, Check.NO_CLOCK, "called datetime.datetime.now"),
        (ReadsClockInReset, Check.NO_CLOCK, r"reset\(\) called time.monotonic"),
        (ReadsClockLate, Check.NO_CLOCK, r"at t=240 s: decide\(\) called time.time_ns"),
        (OpensAFile, Check.NO_IO, "called open"),
        (Prints, Check.NO_IO, "called print"),
        (SharedRandom, Check.NO_GLOBAL_RANDOM, r"reset\(\) called random.seed .the random "
                                               "module's shared generator"),
        (Unseeded, Check.DETERMINISM, "a fresh instance decided"),
        (ClassState, Check.DETERMINISM, r"at t=0 s: .* a fresh instance decided \{nothing\} "
                                        r"\('decision 81'\) instead of \{nothing\} "
                                        r"\('decision 41'\)"),
        (ForgetsToReset, Check.DETERMINISM, "the same instance after reset decided"),
        (ReturnsADict, Check.VALID, "decide.. returned dict, not a Decision"),
        (NamesAnUnknownAction, Check.VALID, "names unknown action 'ghost' .actions: bi_enc, "),
        (SmuggledPlacement, Check.VALID, "placement for 'bi_enc' is 'local', not a Placement"),
        (RaisesOnEmpty, Check.EMPTY, r"decide\(\) raised ValueError: max\(\) .*"
                                     r"\(at test_checker.py:\d+\)"),
        (RaisesLater, Check.NO_RAISE, "at t=110 s: decide.. raised ValueError: did not "
                                      "expect an out-of-memory"),
        (KnowsOnlyItsFirstActions, Check.UNSEEN, "at t=200 s: decide.. raised KeyError: "
                                                 "'sbert_sim'"),
        (NotFrozen, Check.FROZEN_PARAMS, "MutableParams is a dataclass but not frozen"),
        (DictParams, Check.FROZEN_PARAMS, "params must be a frozen dataclass instance, got dict"),
        (NoDecide, Check.PROTOCOL, "missing decide"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_broken_policies_are_caught_by_name(policy: type, check: Check, message: str) -> None:
    ClassState.decided = 40  # 40 decisions a run: the first starts at 41, the next at 81
    with pytest.raises(PolicyCheckError, match=message) as caught:
        check_policy(policy())
    assert caught.value.check is check
    assert f"fails check {check.value!r}" in str(caught.value)
    assert isinstance(caught.value, AssertionError)


def test_the_error_names_the_policy_and_the_time() -> None:
    with pytest.raises(PolicyCheckError) as caught:
        check_policy(RaisesLater())
    error = caught.value
    assert error.policy == "'RaisesLater'" and error.at == 110.0
    assert str(error).startswith("policy 'RaisesLater' fails check 'decides without raising' "
                                 "at t=110 s: decide() raised ValueError")


def test_nothing_stays_patched_even_when_a_check_fails() -> None:
    clock, opener = time.time, open
    before = sys.getprofile()

    def mine(frame: Any, event: str, arg: Any) -> None:
        pass

    sys.setprofile(mine)
    try:
        with pytest.raises(PolicyCheckError):
            check_policy(ReadsTime())
        with pytest.raises(PolicyCheckError):
            check_policy(RaisesOnEmpty())
        assert sys.getprofile() is mine
    finally:
        sys.setprofile(before)
    assert time.time is clock and open is opener
    assert time.time() > 0


def test_logging_is_not_held_against_a_policy() -> None:
    class Logs(Base):
        def decide(self, observation: Observation) -> Decision:
            logging.getLogger("jsorc.test").warning("deciding at %s", observation.now)
            return super().decide(observation)

    check_policy(Logs())


def test_a_policy_that_only_the_unseen_action_run_breaks() -> None:
    """With observations of its own (no action appearing), the checker adds one halfway."""
    sequence = [o for o in synthetic_observations() if "sbert_sim" not in o.actions]
    with pytest.raises(PolicyCheckError, match="'checker_new_action'") as caught:
        check_policy(KnowsOnlyItsFirstActions(), sequence)
    assert caught.value.check is Check.UNSEEN


def test_custom_observations_and_seed() -> None:
    seen: list[int] = []

    class Records(Base):
        def reset(self, seed: int) -> None:
            seen.append(seed)

    check_policy(Records(), [Observation.empty(now=5.0)], seed=11)
    assert set(seen) == {11}


# ----------------------------------------------------------------------------- the observations


def test_synthetic_observations_are_seeded_and_varied() -> None:
    sequence = list(synthetic_observations())
    assert sequence == list(synthetic_observations())
    assert sequence != list(synthetic_observations(seed=1))
    times = [o.now for o in sequence]
    assert times == sorted(times) and len(times) == 40

    actions = [s for o in sequence for s in o.actions.values()]
    sizes = {s.local_memory_mb for s in actions}
    assert min(sizes) < 500 and max(sizes) > 3500
    assert any(s.transition for s in actions)
    assert any(s.placement.mode is Mode.REMOTE and s.desired.mode is Mode.LOCAL for s in actions)
    assert {s.desired.replicas for s in actions} >= {1, 2, 3}
    assert any(s.cold_starts for s in actions) and any(s.queued for s in actions)
    assert any(math.isnan(s.latency.mean_ms) for s in actions)
    assert any(not math.isnan(s.latency.mean_ms) for s in actions)

    assert any(not o.node.runtime_up for o in sequence)
    assert sequence[-1].node.oom_events == 1
    assert all(o.node.memory_used_mb <= o.node.memory_total_mb for o in sequence)
    assert all(o.totals.requests == 0 for o in sequence[:2] + sequence[-3:])  # idle
    first_seen = {a: next(o.now for o in sequence if a in o.actions)
                  for o in sequence for a in o.actions}
    assert max(first_seen.values()) == 200.0  # an action appears halfway


def test_with_new_action_adds_one_from_the_middle() -> None:
    sequence = [Observation.empty(now=t) for t in range(4)]
    out = with_new_action(sequence)
    assert [list(o.actions) for o in out] == [[], [], ["checker_new_action"],
                                              ["checker_new_action"]]
    assert dataclasses.replace(out[0]) == sequence[0]
