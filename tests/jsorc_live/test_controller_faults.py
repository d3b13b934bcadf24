"""The controller with a policy that raises, one that returns nonsense and one that takes too
long: each failure is refused and recorded (a decisions row with the error, an event,
`health()`), the placement stays as it was, and the control loop keeps running. Last, the
policy allow-list through a real `jsorc serve`."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jsorc_live.controller import Controller
from policies import Decision, Mode, NoParams, Observation, Placement
from tests.jsorc_live.servers import jsorc_serving

TOKEN = "faults-token"
WAIT_S = 30.0  # generous bound for anything that should happen "soon" on a busy machine


class _Base:
    Params = NoParams

    def __init__(self, params: Any = None) -> None:
        self.params = NoParams()

    def reset(self, seed: int) -> None:
        pass


def _forged_placement(mode: Any, replicas: Any) -> Placement:
    bad = object.__new__(Placement)  # no __post_init__: what a careless policy could build
    object.__setattr__(bad, "mode", mode)
    object.__setattr__(bad, "replicas", replicas)
    return bad


def _forged_decision(placements: Any, reason: Any = "") -> Decision:
    bad = object.__new__(Decision)
    object.__setattr__(bad, "placements", placements)
    object.__setattr__(bad, "reason", reason)
    return bad


class Returning(_Base):
    """Returns what it is given, whatever that is."""

    def __init__(self, answer: Callable[[], Any]) -> None:
        super().__init__()
        self.answer = answer

    def decide(self, observation: Observation) -> Decision:
        return self.answer()  # type: ignore[no-any-return]


class Applied:
    """An `apply` that records what it was asked to do."""

    def __init__(self, refuse: str = "") -> None:
        self.calls: list[tuple[str, Placement]] = []
        self.refuse = refuse

    def __call__(self, action: str, placement: Placement) -> bool:
        if action == self.refuse:
            raise ValueError(f"replicas {placement.replicas} above the cap 4")
        self.calls.append((action, placement))
        return True


def controller(policy: Any, apply: Applied | None = None, **kwargs: Any) -> Controller:
    return Controller(policy, "p", apply=apply or Applied(), known=lambda: ["a", "b"],
                      clock=time.monotonic, **kwargs)


NONSENSE: list[tuple[str, Callable[[], Any], str]] = [
    ("not a decision", lambda: "remote everything", "must return a Decision, got str"),
    ("none", lambda: None, "must return a Decision, got NoneType"),
    ("unknown action", lambda: Decision({"zzz": Placement.local()}), "unknown action 'zzz'"),
    ("negative replicas", lambda: _forged_decision({"a": _forged_placement(Mode.REMOTE, -3)}),
     "replicas >= 1, got -3"),
    ("nan replicas", lambda: _forged_decision({"a": _forged_placement(Mode.REMOTE, math.nan)}),
     "replicas must be an int, got nan"),
    ("unknown mode", lambda: _forged_decision({"a": _forged_placement("cloud", 0)}),
     "'cloud'"),
    ("not a placement", lambda: _forged_decision({"a": "remote:2"}), "must be a Placement"),
    ("placements not a mapping", lambda: _forged_decision(["a"]), "must be a mapping"),
    ("reason not a string", lambda: _forged_decision({}, 42), "reason must be a str"),
    ("huge replica count", lambda: Decision({"a": Placement.remote(100_000)}),
     "remote:100000 of 'a', above the replica cap 32"),
]


@pytest.mark.parametrize(("answer", "named"), [n[1:] for n in NONSENSE],
                         ids=[n[0] for n in NONSENSE])
def test_nonsense_is_refused_recorded_and_the_placement_kept(
        answer: Callable[[], Any], named: str) -> None:
    applied = Applied()
    control = controller(Returning(answer), applied, max_replicas=lambda: 32)
    assert control.step(Observation.empty(now=7.0)) is None
    assert applied.calls == []
    (row,) = control.decisions
    assert named in row["error"] and row["ts"] == 7.0 and row["reason"].endswith("kept")
    assert control.events[-1]["kind"] == "policy_error" and named in control.events[-1]["detail"]
    health = control.health()
    assert health["errors"] == 1 and named in health["last_error"]["error"]


def test_a_decision_changed_after_it_was_returned_does_not_reach_apply() -> None:
    placements = {"a": Placement.remote(2)}
    applied = Applied()
    decision = controller(Returning(lambda: Decision(placements)), applied).step(
        Observation.empty())
    placements["a"] = _forged_placement(Mode.REMOTE, -1)
    assert decision is not None and decision.placements["a"] == Placement.remote(2)
    assert applied.calls == [("a", Placement.remote(2))]


def test_a_refused_apply_is_recorded_and_the_other_actions_still_move() -> None:
    applied = Applied(refuse="a")
    control = controller(Returning(lambda: Decision({"a": Placement.remote(9),
                                                     "b": Placement.local()}, "both")),
                         applied)
    assert control.step(Observation.empty()) is not None
    assert applied.calls == [("b", Placement.local())]
    refused = [d for d in control.decisions if d["error"]]
    assert [(d["action"], d["placement"]) for d in refused] == [("a", "remote:9")]
    assert "above the cap 4" in refused[0]["error"]
    assert control.health()["last_error"]["kind"] == "apply_error"


class Raising(_Base):
    def decide(self, observation: Observation) -> Decision:
        raise RuntimeError("always")


class ResetRaising(_Base):
    def reset(self, seed: int) -> None:
        raise KeyError("seed")

    def decide(self, observation: Observation) -> Decision:
        return Decision.keep()


class Exiting(_Base):
    def decide(self, observation: Observation) -> Decision:
        raise SystemExit(3)


def test_a_reset_that_raises_or_a_decide_that_exits_is_recorded() -> None:
    control = controller(ResetRaising())
    assert "reset() failed: KeyError" in control.decisions[0]["error"]
    assert control.step(Observation.empty()) == Decision.keep()
    exiting = controller(Exiting())
    assert exiting.step(Observation.empty()) is None
    assert exiting.decisions[0]["error"].startswith("SystemExit: 3")


class Slow(_Base):
    """Blocks in decide until `release` is set; then decides at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls = 0

    def decide(self, observation: Observation) -> Decision:
        self.calls += 1
        self.release.wait()
        return Decision({"a": Placement.local()}, "slow but sure")


def _policy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("policy-slow-decide")]


@pytest.fixture
def slow() -> Iterator[Slow]:
    policy = Slow()
    yield policy
    policy.release.set()


def test_a_slow_policy_is_abandoned_then_skipped_until_it_returns(slow: Slow) -> None:
    applied = Applied()
    control = Controller(slow, "slow", apply=applied, known=lambda: ["a"],
                         clock=time.monotonic, deadline_s=0.2)
    started = time.monotonic()
    assert control.step(Observation.empty(now=1.0)) is None
    assert time.monotonic() - started < WAIT_S
    for now in (2.0, 3.0, 4.0):
        assert control.step(Observation.empty(now=now)) is None
    errors = [d["error"] for d in control.decisions]
    assert errors[0] == "policy timed out: decide() took longer than 0.2 s; placement kept"
    assert len(errors) == 4 and all("still running" in e and "step skipped" in e
                                    for e in errors[1:])
    assert slow.calls == 1, "no second call while the first is running"
    assert len(_policy_threads()) == 1
    assert control.health()["stuck_call"] == "decide"
    assert applied.calls == []

    slow.release.set()
    deadline = time.monotonic() + WAIT_S
    while _policy_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    decision = control.step(Observation.empty(now=5.0))
    assert decision is not None and decision.reason == "slow but sure"
    assert applied.calls == [("a", Placement.local())], "the late answer itself is discarded"
    assert [e["kind"] for e in control.events] == ["policy_timeout"] * 4 + ["policy_late"]
    assert control.health()["stuck_call"] is None


def test_the_loop_keeps_running_with_a_stuck_policy_and_stops_promptly(slow: Slow) -> None:
    control = Controller(slow, "slow", apply=Applied(), known=lambda: ["a"],
                         clock=time.monotonic, deadline_s=0.1)
    control.start(lambda interval: Observation.empty(now=time.monotonic(),
                                                     interval_s=interval),
                  lambda: 0.05, lambda: True)
    try:
        deadline = time.monotonic() + WAIT_S
        while len(control.decisions) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(control.decisions) >= 5, "the loop went on stepping"
        assert len(_policy_threads()) == 1 and slow.calls == 1
    finally:
        started = time.monotonic()
        control.stop()
        stopped_in = time.monotonic() - started
    assert control._thread is None
    assert stopped_in < WAIT_S


def test_a_raising_policy_in_the_loop_is_recorded_every_step() -> None:
    control = controller(Raising())
    steps = {"n": 0}

    def observe(interval: float) -> Observation:
        steps["n"] += 1
        return Observation.empty(now=float(steps["n"]), interval_s=interval)

    control.start(observe, lambda: 0.05, lambda: True)
    try:
        deadline = time.monotonic() + WAIT_S
        while len(control.decisions) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        control.stop()
    assert len(control.decisions) >= 3
    assert all(d["error"].startswith("RuntimeError: always") for d in control.decisions)


# ------------------------------------------------------------------- through jsorc serve

POLICY_FILE = '''
from policies import Decision, NoParams


class FromFile:
    """A policy loaded with jsorc serve --policy-file."""

    Params = NoParams

    def __init__(self, params=None):
        self.params = NoParams()

    def reset(self, seed):
        pass

    def decide(self, observation):
        raise RuntimeError("from the policy file")
'''


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"token {TOKEN}"},
                      timeout=30)


def test_jsorc_serve_imports_only_allowed_policy_modules(tmp_path: Path) -> None:
    name = f"served_{tmp_path.name.replace('-', '_')}"
    policy_file = tmp_path / f"{name}.py"
    policy_file.write_text(POLICY_FILE)
    (tmp_path / f"{name}_marker.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_name('imported.flag').write_text('ran')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with jsorc_serving(TOKEN, "--policy-file", str(policy_file), "--allow-policy-module",
                       "tests.reliability.*", env=env) as url:
        refused = _post(url, "/jsorc/actionpolicy/set",
                        {"policy_name": f"{name}_marker:Nope", "policy_params": {}})
        assert refused.status_code in (400, 403, 422), refused.text
        body = refused.json()
        assert body["success"] is False
        assert f"'{name}_marker' is not allowed" in body["message"]
        assert "--allow-policy-module" in body["message"]
        assert not (tmp_path / "imported.flag").exists()
        for ref in ("this:Nope", "subprocess:Popen", "os:system"):
            answer = _post(url, "/jsorc/actionpolicy/set", {"policy_name": ref,
                                                            "policy_params": {}})
            assert answer.status_code in (400, 403, 422) and "not allowed" in \
                answer.json()["message"], answer.text

        assert _post(url, "/jsorc/actionpolicy/set",
                     {"policy_name": f"{name}:FromFile", "policy_params": {}}).status_code == 200
        _post(url, "/jsorc/config/set", {"name": "backoff_interval", "value": 0.2})
        _post(url, "/jsorc/config/set", {"name": "automation", "value": True})
        deadline = time.monotonic() + WAIT_S
        errors: list[str] = []
        while not errors and time.monotonic() < deadline:
            got = _post(url, "/jsorc/actionpolicy/get", {}).json()
            errors = [d["error"] for d in got["decisions"] if d["error"]]
            time.sleep(0.1)
        assert errors and "RuntimeError: from the policy file" in errors[-1]
        assert _post(url, "/jsorc/status", {}).status_code == 200, "the server lives on"
        answer = _post(url, "/jsorc/actionpolicy/set", {
            "policy_name": "tests.reliability.fault_policies:Raising", "policy_params": {}})
        assert answer.status_code == 200, answer.text


def test_jsorc_serve_refuses_to_start_with_a_bad_policy_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken_policies.py"
    broken.write_text("raise RuntimeError('no')\n")
    with pytest.raises(AssertionError, match=r"cannot start: policy file .* failed to import"), \
            jsorc_serving(TOKEN, "--policy-file", str(broken), timeout_s=WAIT_S):
        pass
