"""One machine shared by everything: replicas on the node's cores, the load generator's CPU,
and the runtime's own parallelism (node.replicas_share_cores, workload.client_cpu_ms,
node.runtime_cores).

With constant service times and a closed loop the expected figures are exact: a saturated
single server serves one request per service time, and a lone client's cycle is the sum of
its phases. They are computed here from the scenario's numbers, not from the simulator.
"""

from __future__ import annotations

from typing import Any

import pytest

from jsorc_sim.scenario import ScenarioError, from_dict
from jsorc_sim.simulate import simulate

DURATION_S = 200.0
SERVICE_MS = 5.0


def world(*, node: dict[str, Any], placement: str, clients: int,
          workload: dict[str, Any] | None = None, compute_ms: float = 0.0) -> dict[str, Any]:
    return {
        "name": "shared", "duration_s": DURATION_S,
        "node": {"memory_mb": 4096.0, **node},
        "actions": {"a": {"service": {"dist": "const", "mean_ms": SERVICE_MS},
                          "remote_cores": 1}},
        "apps": {"x": {"calls": ["a"], "compute_ms": compute_ms}},
        "workload": {"kind": "closed", "clients": clients, **(workload or {})},
        "placement": {"a": placement},
    }


def run(table: dict[str, Any]) -> tuple[float, float]:
    """(throughput per second, mean latency ms) of the run's finished requests."""
    result = simulate(from_dict(table))
    requests = result.requests
    ok = requests[requests["ok"] == 1]
    return len(ok) / DURATION_S, float(ok["latency_ms"].mean())


def test_replicas_on_one_core_serve_one_call_per_service_time() -> None:
    # 4 replicas of one core each, 8 clients: without sharing, 4 calls at once; with one
    # shared node core, one at a time whatever the replicas.
    off = run(world(node={"cores": 1}, placement="remote:4", clients=8))
    on = run(world(node={"cores": 1, "replicas_share_cores": True}, placement="remote:4",
                   clients=8))
    assert off[0] == pytest.approx(4 * 1000.0 / SERVICE_MS, rel=0.01)
    assert on[0] == pytest.approx(1000.0 / SERVICE_MS, rel=0.01)
    # 8 clients queue behind one server: each waits for the 7 others (Little's law).
    assert on[1] == pytest.approx(8 * SERVICE_MS, rel=0.01)


def test_client_cpu_is_outside_latency_but_holds_a_core() -> None:
    cpu_ms = 3.0
    lone = run(world(node={"cores": 1}, placement="local", clients=1,
                     workload={"client_cpu_ms": cpu_ms}))
    assert lone[0] == pytest.approx(1000.0 / (SERVICE_MS + cpu_ms), rel=0.01)
    assert lone[1] == pytest.approx(SERVICE_MS)
    # 4 clients, 1 core: the core does SERVICE + cpu per request, so it is the bottleneck.
    busy = run(world(node={"cores": 1}, placement="local", clients=4,
                     workload={"client_cpu_ms": cpu_ms}))
    assert busy[0] == pytest.approx(1000.0 / (SERVICE_MS + cpu_ms), rel=0.01)
    # ...and a remote replica with a core of its own leaves the node core to the clients.
    remote = run(world(node={"cores": 1}, placement="remote:1", clients=4,
                       workload={"client_cpu_ms": cpu_ms}))
    assert remote[0] == pytest.approx(1000.0 / SERVICE_MS, rel=0.01)


def test_runtime_cores_bound_the_runtime_work() -> None:
    two = run(world(node={"cores": 2}, placement="local", clients=4, compute_ms=1.0))
    one = run(world(node={"cores": 2, "runtime_cores": 1}, placement="local", clients=4,
                    compute_ms=1.0))
    assert two[0] == pytest.approx(2 * 1000.0 / (SERVICE_MS + 1.0), rel=0.01)
    assert one[0] == pytest.approx(1000.0 / (SERVICE_MS + 1.0), rel=0.01)
    # Remote calls are not the runtime's work: runtime_cores leave them alone.
    remote = run(world(node={"cores": 2, "runtime_cores": 1}, placement="remote:2",
                       clients=4))
    assert remote[0] == pytest.approx(2 * 1000.0 / SERVICE_MS, rel=0.01)


def test_defaults_change_nothing() -> None:
    base = world(node={"cores": 2}, placement="remote:1", clients=3, compute_ms=2.0)
    explicit = world(node={"cores": 2, "runtime_cores": 2, "replicas_share_cores": False},
                     placement="remote:1", clients=3, compute_ms=2.0,
                     workload={"client_cpu_ms": 0.0})
    for table in (base, explicit):
        table["actions"]["a"]["service"] = {"dist": "exp", "mean_ms": SERVICE_MS}
    a, b = simulate(from_dict(base)), simulate(from_dict(explicit))
    assert a.requests.equals(b.requests)
    assert a.calls.equals(b.calls)


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("node", "replicas_share_cores", "yes", "node.replicas_share_cores must be true or false"),
    ("node", "runtime_cores", 0, "node.runtime_cores must be > 0"),
    ("node", "runtime_cores", 1.5, "node.runtime_cores must be a whole number"),
    ("workload", "client_cpu_ms", -1.0, "workload.client_cpu_ms must be >= 0"),
    ("workload", "client_cpu_ms", float("inf"), "workload.client_cpu_ms must be finite"),
])
def test_bad_values_are_named(section: str, key: str, value: Any, message: str) -> None:
    table = world(node={"cores": 1}, placement="local", clients=1)
    table[section][key] = value
    with pytest.raises(ScenarioError, match=message):
        from_dict(table)


def test_network_on_loopback_holds_a_core() -> None:
    # rtt 3 ms + service 5 ms per call, 4 clients, 2 replicas, 1 node core: with both on the
    # core, it does 8 ms per request; with the network off the core, 5 ms.
    node = {"cores": 1, "replicas_share_cores": True}
    table = world(node={**node, "network_holds_core": True}, placement="remote:2", clients=4)
    table["network"] = {"rtt_ms": 3.0}
    assert run(table)[0] == pytest.approx(1000.0 / (SERVICE_MS + 3.0), rel=0.01)
    table["node"]["network_holds_core"] = False
    assert run(table)[0] == pytest.approx(1000.0 / SERVICE_MS, rel=0.01)
