"""Properties of every run, checked with hypothesis on random small scenarios.

Random scenarios: 1-4 actions (memory, service distribution, load and start times, default
mode, queue), 1-3 apps calling random sequences of them, a node whose memory is sometimes
too small (so out-of-memory happens), a closed or Poisson workload, random initial
placements and a policy among none / all_local / all_remote / static.

Times mix "odd" values (7.3 ms, 2.3 s) with round ones and zero start-up times, so that
events often land in the same instant as a control step or a slot hand-over: the cases that
once broke the model (see test_model.py) stay covered here too.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jsorc_sim.results import Result
from jsorc_sim.scenario import Scenario, from_dict
from jsorc_sim.simulate import simulate

SERVICE_MS = (13.7, 42.1, 95.3, 180.9, 100.0, 500.0)
LOAD_S = (0.0, 0.7, 2.3, 4.1, 5.0)
START_S = (0.0, 0.7, 2.3, 5.1, 2.5, 10.0)
LOCAL_MB = (0.0, 50.0, 230.0, 410.0, 730.0)
EPS = 1e-9  # seconds or ms of floating-point slack

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

OOM_DETAIL = re.compile(r"loading (\w+) \((\d+) MB\) with (\d+) of (\d+) MB in use")


# ----------------------------------------------------------------------------- strategies


@st.composite
def actions(draw: st.DrawFn, name: str, network: bool) -> dict[str, Any]:
    dist = draw(st.sampled_from(["const", "exp", "lognormal"]))
    service: dict[str, Any] = {"dist": dist, "mean_ms": draw(st.sampled_from(SERVICE_MS))}
    if dist == "lognormal":
        service["cv"] = draw(st.sampled_from([0.3, 1.2]))
    queue = draw(st.sampled_from(["shared", "per_replica"]))
    return {
        "service": service,
        "local_memory_mb": draw(st.sampled_from(LOCAL_MB)),
        "local_load_s": draw(st.sampled_from(LOAD_S)),
        "remote_start_s": draw(st.sampled_from(START_S)),
        "remote_cores": draw(st.integers(1, 2)),
        "local_slowdown": draw(st.sampled_from([1.0, 1.7])),
        "payload_kb": draw(st.sampled_from([0.0, 4.0])) if network else 0.0,
        "startup_cv": draw(st.sampled_from([0.0, 0.5])),
        "default_mode": draw(st.sampled_from(["local", "remote"])),
        "remote_queue": queue,
    }


PLACEMENTS = ("unloaded", "local", "remote:1", "remote:2", "remote:3")


@st.composite
def policy_choices(draw: st.DrawFn, names: list[str]) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(["none", "all_local", "all_remote", "static"]))
    if kind == "all_remote":
        return kind, {"replicas": draw(st.integers(1, 3))}
    if kind == "static":
        chosen = draw(st.dictionaries(st.sampled_from(names), st.sampled_from(PLACEMENTS)))
        default = draw(st.sampled_from(["", "local", "remote:2"]))
        return kind, {"placements": chosen, "default": default}
    return kind, {}


@st.composite
def scenarios(draw: st.DrawFn, workload: str | None = None) -> dict[str, Any]:
    """A scenario as a TOML-like table, with its policy in [policy]."""
    network = draw(st.booleans())
    names = [f"a{i}" for i in range(draw(st.integers(1, 4)))]
    acts = {name: draw(actions(name, network)) for name in names}
    apps = {
        f"w{i}": {"calls": draw(st.lists(st.sampled_from(names), min_size=1, max_size=4)),
                  "compute_ms": draw(st.sampled_from([0.0, 2.9]))}
        for i in range(draw(st.integers(1, 3)))
    }
    runtime_mb = draw(st.sampled_from([0.0, 120.0, 300.0]))
    local_total = sum(a["local_memory_mb"] for a in acts.values())
    # From "nothing fits" to "everything fits": out-of-memory happens in many examples.
    memory_mb = runtime_mb + draw(st.sampled_from([0.3, 0.6, 1.1, 2.0])) * max(local_total, 100)
    kind = workload or draw(st.sampled_from(["closed", "poisson"]))
    if kind == "closed":
        load = {"kind": "closed", "clients": draw(st.integers(1, 4)),
                "think_ms": draw(st.sampled_from([0.0, 37.7, 310.3]))}
    else:
        load = {"kind": "poisson", "rate_per_s": draw(st.sampled_from([0.7, 3.3, 11.9, 27.1]))}
    load["mix"] = {app: draw(st.sampled_from([0.5, 1.0, 3.0])) for app in apps}
    placement = draw(st.dictionaries(st.sampled_from(names), st.sampled_from(PLACEMENTS)))
    policy, params = draw(policy_choices(names))
    duration = draw(st.sampled_from([15.0, 40.0]))
    return {
        "duration_s": duration,
        "warmup_s": draw(st.sampled_from([0.0, 5.0])),
        "timeline_s": draw(st.sampled_from([1.0, 5.0])),
        "node": {"cores": draw(st.integers(1, 4)), "memory_mb": memory_mb,
                 "runtime_memory_mb": runtime_mb,
                 "restart_s": draw(st.sampled_from([1.3, 7.7, 30.0]))},
        "network": {"rtt_ms": draw(st.sampled_from([0.0, 3.1])) if network else 0.0},
        "actions": acts,
        "apps": apps,
        "workload": load,
        "placement": placement,
        "policy": {"name": policy, "params": params,
                   "interval_s": draw(st.sampled_from([2.5, 10.0]))},
    }


# ----------------------------------------------------------------------------- checks


def check_accounting(s: Scenario, r: Result) -> None:
    """Every arrival is one request row (completed or failed) or counted unfinished."""
    m, req = r.meters, r.requests
    assert m.unfinished >= 0, f"negative unfinished count: {m}"
    assert m.arrivals == len(req) + m.unfinished, \
        f"arrivals {m.arrivals} != {len(req)} request rows + {m.unfinished} unfinished"
    assert req["request_id"].is_unique, "a request id appears in two request rows"
    assert req["request_id"].between(0, m.arrivals - 1).all(), "request id out of range"
    if s.workload.kind == "closed":
        assert m.unfinished <= s.workload.clients, \
            f"{m.unfinished} unfinished requests from {s.workload.clients} closed-loop clients"
    cost = r.cost()
    assert cost["failed_requests"] == int((~req["ok"]).sum())
    assert cost["failed_calls"] == int((~r.calls["ok"]).sum())
    assert cost["arrivals"] == m.arrivals and cost["unfinished_requests"] == m.unfinished


def check_calls_belong_to_requests(s: Scenario, r: Result) -> None:
    """Call rows belong to requests; ok requests ran all their app's calls, in order, ok;
    a failed request failed by out-of-memory, at an out-of-memory instant."""
    calls, req = r.calls, r.requests
    assert calls["request_id"].between(0, r.meters.arrivals - 1).all()
    by_id = req.set_index("request_id")
    unfinished = set(calls["request_id"]) - set(by_id.index)
    assert len(unfinished) <= r.meters.unfinished, \
        f"calls of {len(unfinished)} requests with no row, only {r.meters.unfinished} unfinished"
    assert calls.loc[calls["request_id"].isin(unfinished), "ok"].all(), \
        "a request with a failed call must have a (failed) request row"

    position = calls.groupby("request_id", sort=False).cumcount().to_numpy()
    expected = [s.apps[app].calls[p] if p < len(s.apps[app].calls) else "<extra call>"
                for app, p in zip(calls["app"].astype(str), position, strict=True)]
    actual = calls["action"].astype(str).tolist()
    wrong = [i for i, (a, e) in enumerate(zip(actual, expected, strict=True)) if a != e]
    assert not wrong, f"calls out of app order, e.g.\n{calls.iloc[wrong[:5]]}"

    finished = calls[calls["request_id"].isin(by_id.index)]
    req_app = by_id.loc[finished["request_id"], "app"].astype(str).to_numpy()
    assert (finished["app"].astype(str).to_numpy() == req_app).all(), "call app != request app"
    count = calls.groupby("request_id").size()
    n_calls = {app: len(spec.calls) for app, spec in s.apps.items()}

    ok = req[req["ok"]]
    have = count.reindex(ok["request_id"], fill_value=0).to_numpy()
    want = ok["app"].astype(str).map(n_calls).to_numpy()
    assert (have == want).all(), "an ok request did not run all its app's calls"
    assert (ok["error"] == "").all(), "an ok request has an error"
    ok_calls = calls[calls["request_id"].isin(ok["request_id"])]
    assert ok_calls["ok"].all(), "an ok request has a failed call"

    failed_calls = calls[~calls["ok"]]
    last = (position == count.reindex(calls["request_id"]).to_numpy() - 1)
    assert last[~calls["ok"].to_numpy()].all(), "a failed call is not its request's last"
    assert (failed_calls["error"] == "out_of_memory").all()
    failed = req[~req["ok"]]
    assert (failed["error"] == "out_of_memory").all(), \
        f"a request failed for another reason than out-of-memory:\n{failed.head()}"
    assert failed_calls["request_id"].isin(failed["request_id"]).all()
    ooms = np.sort(r.events.loc[r.events["kind"] == "out_of_memory", "ts"].to_numpy())
    ends = (failed["ts"] + failed["latency_ms"] / 1000).to_numpy()
    for end in ends:
        assert ooms.size and np.min(np.abs(ooms - end)) < 1e-6, \
            f"a request failed at {end} s, not at an out-of-memory instant {ooms.tolist()}"


def check_times(s: Scenario, r: Result) -> None:
    calls, req = r.calls, r.requests
    for column in ("ts", "wait_ms", "service_ms", "network_ms", "latency_ms"):
        assert (calls[column] >= 0).all(), f"negative calls.{column}:\n{calls[calls[column] < 0]}"
    for column in ("ts", "latency_ms"):
        assert (req[column] >= 0).all(), f"negative requests.{column}"
    for name in ("decisions", "timeline", "events"):
        ts = getattr(r, name)["ts"]
        assert ((ts >= 0) & (ts <= s.duration_s)).all(), f"{name}.ts outside the run"
    assert (calls["ts"] <= s.duration_s).all() and (req["ts"] <= s.duration_s).all()
    ok = calls[calls["ok"]]
    parts = ok["wait_ms"] + ok["service_ms"] + ok["network_ms"]
    assert (ok["latency_ms"] >= parts - EPS).all(), \
        f"latency below wait + service + network:\n{ok[ok['latency_ms'] < parts - EPS]}"
    local = calls[calls["placement"] == "local"]
    assert (local["network_ms"] == 0).all() and (local["replica"] == -1).all()
    assert (ok.loc[ok["placement"] == "remote", "replica"] >= 0).all()
    # A call happens inside its request.
    by_id = req.set_index("request_id")
    mine = calls[calls["request_id"].isin(by_id.index)]
    parent = by_id.loc[mine["request_id"]]
    assert (mine["ts"].to_numpy() >= parent["ts"].to_numpy() - EPS).all(), \
        "a call issued before its request arrived"
    call_end = mine["ts"].to_numpy() + mine["latency_ms"].to_numpy() / 1000
    req_end = parent["ts"].to_numpy() + parent["latency_ms"].to_numpy() / 1000
    assert (call_end <= req_end + 1e-6).all(), "a call ended after its request"


def down_until(ooms: list[float], restart_s: float, t: float) -> float:
    """The first time >= t at which the runtime is up (restarts chain)."""
    for oom in ooms:
        if oom - EPS <= t < oom + restart_s - EPS:
            t = oom + restart_s
    return t


def check_memory(s: Scenario, r: Result) -> None:
    node = s.node
    tl, ev = r.timeline, r.events
    assert (tl["memory_used_mb"] <= node.memory_mb + EPS).all(), \
        f"node memory above {node.memory_mb} MB:\n{tl[tl['memory_used_mb'] > node.memory_mb]}"
    assert (tl["memory_used_mb"] >= node.runtime_memory_mb - EPS).all()
    assert node.runtime_memory_mb - EPS <= r.meters.peak_memory_mb <= node.memory_mb + EPS, \
        f"peak {r.meters.peak_memory_mb} MB outside [runtime, {node.memory_mb}]"
    assert (tl["memory_used_mb"] <= r.meters.peak_memory_mb + EPS).all(), "above the peak"

    ooms = ev.loc[ev["kind"] == "out_of_memory"]
    assert len(ooms) == r.meters.oom_events == r.cost()["oom_events"]
    # Each out-of-memory is a real one: the load named would have passed the limit.
    for detail in ooms["detail"]:
        match = OOM_DETAIL.fullmatch(detail)
        assert match, f"unexpected out-of-memory detail {detail!r}"
        action, mb, used = match[1], float(match[2]), float(match[3])
        assert math.isclose(float(match[4]), node.memory_mb, abs_tol=0.5)
        assert math.isclose(mb, s.actions[action].local_memory_mb, abs_tol=0.5)
        assert used + mb > node.memory_mb - 1.0, f"{detail!r}: it would have fit"
    # ... and restarts come restart_s later.
    oom_ts = sorted(ooms["ts"])
    restarts = sorted(ev.loc[ev["kind"] == "restarted", "ts"])
    want = [t + node.restart_s for t in oom_ts if t + node.restart_s < s.duration_s - 1e-6]
    assert np.allclose(restarts, want), f"restarts {restarts}, expected {want}"
    # A local placement of an action that can never fit runs the node out of memory as soon
    # as the runtime is up -- unless it is asked for something else before its load begins
    # (the load is then cancelled, taking no memory): that is the only way the limit is touched.
    never_fits = {n for n, a in s.actions.items()
                  if node.runtime_memory_mb + a.local_memory_mb > node.memory_mb}
    changes = r.decisions[r.decisions["placement"].ne("")]
    asked = changes[changes["placement"].eq("local") & changes["action"].isin(never_fits)]
    for index, t, action in zip(asked.index, asked["ts"], asked["action"], strict=True):
        up = down_until(oom_ts, node.restart_s, t)
        if up >= s.duration_s - 1e-6:
            continue
        later = changes[(changes.index > index) & changes["action"].eq(action)]
        if len(later) and later["ts"].iloc[0] <= up + EPS \
                and later["placement"].iloc[0] != "local":
            continue  # superseded before the load could begin
        assert any(t - EPS <= o <= up + EPS for o in oom_ts), \
            f"{action} ({s.actions[action].local_memory_mb} MB) asked local at {t} s on a " \
            f"{node.memory_mb} MB node, but no out-of-memory by {up} s: {oom_ts}"


def check_replica_memory(s: Scenario, r: Result) -> None:
    """The replica memory in use is the sum over actions of replicas x their memory."""
    tl = r.timeline
    per_replica = tl["action"].map({n: a.replica_memory_mb for n, a in s.actions.items()})
    expected = (tl["replicas"] * per_replica).groupby(tl["ts"]).sum()
    reported = tl.groupby("ts")["replica_memory_mb"].first()
    assert np.allclose(reported.to_numpy(), expected.to_numpy()), \
        f"timeline replica_memory_mb != sum of replicas x memory:\n" \
        f"{pd.DataFrame({'reported': reported, 'expected': expected}).head(10)}"


def check_all(s: Scenario, r: Result) -> None:
    check_accounting(s, r)
    check_calls_belong_to_requests(s, r)
    check_times(s, r)
    check_memory(s, r)
    check_replica_memory(s, r)


# ----------------------------------------------------------------------------- properties


@SETTINGS
@given(raw=scenarios(), seed=st.integers(0, 2**16))
def test_every_run_keeps_the_invariants(raw: dict[str, Any], seed: int) -> None:
    s = from_dict(raw)
    r = simulate(s, seed=seed)
    assert r.status == "ok", r.status
    check_all(s, r)


@SETTINGS
@given(raw=scenarios(), seed=st.integers(0, 2**16))
def test_same_scenario_and_seed_give_identical_tables(raw: dict[str, Any], seed: int) -> None:
    s = from_dict(raw)
    first, second = simulate(s, seed=seed), simulate(s, seed=seed)
    for table in ("calls", "requests", "decisions", "timeline", "events"):
        pdt.assert_frame_equal(getattr(first, table), getattr(second, table), obj=table)
    assert first.meters == second.meters
    assert first.report() == second.report()


@SETTINGS
@given(raw=scenarios(workload="poisson"), seed=st.integers(0, 2**16),
       others=st.lists(policy_choices(["a0", "a1", "a2", "a3"]), min_size=1, max_size=2))
def test_poisson_arrivals_do_not_depend_on_the_policy(
        raw: dict[str, Any], seed: int, others: list[tuple[str, dict[str, Any]]]) -> None:
    s = from_dict(raw)
    base = simulate(s, seed=seed)
    for name, params in others:
        params = dict(params)
        if name == "static":  # only the actions this scenario has
            params["placements"] = {a: p for a, p in params["placements"].items()
                                    if a in s.actions}
        other = simulate(s, name, params=params, seed=seed)
        assert other.meters.arrivals == base.meters.arrivals, \
            f"{name}: {other.meters.arrivals} arrivals, {base.policy}: {base.meters.arrivals}"
        # Request ids are given in arrival order: the same id is the same arrival.
        a = base.requests.set_index("request_id")
        b = other.requests.set_index("request_id")
        both = a.index.intersection(b.index)
        assert len(both) >= min(len(a), len(b)) - base.meters.unfinished \
            - other.meters.unfinished
        assert (a.loc[both, "ts"] == b.loc[both, "ts"]).all(), \
            f"{name}: arrival times differ from {base.policy}'s for the same seed"
        assert (a.loc[both, "app"].astype(str) == b.loc[both, "app"].astype(str)).all(), \
            f"{name}: arrivals call other apps than under {base.policy}"
        # The first N arrivals that every run has, by time, are the same.
        n = min(len(a), len(b))
        first_a = np.sort(a["ts"].to_numpy())
        first_b = np.sort(b["ts"].to_numpy())
        complete = min(_complete_prefix(a.index), _complete_prefix(b.index), n)
        assert (first_a[:complete] == first_b[:complete]).all()
        # Common random numbers: the same arrival's calls get the same service draws.
        mine, theirs = _base_draws(s, base), _base_draws(s, other)
        for key in mine.keys() & theirs.keys():
            assert mine[key] == pytest.approx(theirs[key], rel=1e-9), \
                f"{name}: request {key[0]}'s call {key[1]} drew {theirs[key]}, " \
                f"under {base.policy} {mine[key]}"


def _base_draws(s: Scenario, r: Result) -> dict[tuple[int, int], float]:
    """(request id, call position) -> the call's service draw before the local slowdown, for
    every call that ran (a failed call has no service time)."""
    calls = r.calls
    position = calls.groupby("request_id", sort=False).cumcount()
    slowdown = calls["action"].astype(str).map(
        {name: a.local_slowdown for name, a in s.actions.items()}).astype(float)
    local = (calls["placement"] == "local").to_numpy()
    base = calls["service_ms"].to_numpy() / np.where(local, slowdown.to_numpy(), 1.0)
    ok = calls["ok"].to_numpy()
    return {(int(rid), int(pos)): float(v) for rid, pos, v, good in zip(
        calls["request_id"], position, base, ok, strict=True) if good}


def _complete_prefix(ids: pd.Index) -> int:
    """How many ids 0, 1, 2, ... are all present (the arrivals whose rows all exist)."""
    present = np.zeros(len(ids) + 1, dtype=bool)
    small = ids[ids <= len(ids)]
    present[small.to_numpy()] = True
    return int(np.argmin(present))  # the first id missing (there is always one)
