"""What a policy sees, against what is true: the window signals in two cases worked out by hand.

    python experiments/signals.py [--scenario experiments/scenarios/closed_one_replica.toml]

1. One replica, 4 closed-loop clients, 25 s calls: the true number of calls in the system
   is always 4 and the replica's core is always busy. Prints every window's
   `remote_concurrency`, `remote_utilisation`, `in_flight` + `queued` and the node's
   `cpu_utilisation`.
2. The same clients with 50 ms calls, a 45 s replica start and nothing placed (the first
   call is a cold start), decisions every 2 s: what KPA and HPA ask for. Their formulas on
   the true concurrency (4): KPA ceil(4 / 0.7) = 6; HPA on utilisation ceil(4 busy cores /
   0.8) = 5.

Exits 1 if a reading is off (concurrency or utilisation more than 1 % from the truth, or an
autoscaler asking for more than 8 replicas).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from jsorc_sim.simulate import simulate
from policies.recorded import Recorded

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "closed_one_replica.toml"
COLD_START = {"actions.a.service.mean_ms": 50.0, "actions.a.remote_start_s": 45.0,
              "placement.a": "unloaded", "policy.interval_s": 2.0, "duration_s": 600.0}


def windows(scenario: Path) -> bool:
    spy = Recorded()
    simulate(scenario, spy, seed=1)
    print("1. one replica, 4 closed-loop clients, 25 s calls (truth: 4 calls, core busy)")
    print(f"{'window s':>12} {'remote_concurrency':>19} {'remote_utilisation':>19} "
          f"{'in_flight+queued':>17} {'node cpu':>9}")
    good = True
    for before, obs in zip(spy.seen, spy.seen[1:], strict=False):
        a = obs.actions["a"]
        print(f"{before.now:5.0f}-{obs.now:<6.0f} {a.remote_concurrency:19.3f} "
              f"{a.remote_utilisation:19.3f} {a.in_flight + a.queued:17d} "
              f"{obs.node.cpu_utilisation:9.3f}")
        good &= abs(a.remote_concurrency - 4.0) <= 0.04 and abs(a.remote_utilisation - 1) <= 0.01
    return good


def cold_start(scenario: Path, name: str, formula: str) -> bool:
    result = simulate(scenario, name, seed=1, overrides=COLD_START)
    asked = result.decisions[(result.decisions["source"] == name)
                             & (result.decisions["placement"] != "")]
    counts = [int(p.split(":")[1]) for p in asked["placement"] if p.startswith("remote:")]
    print(f"\n2. {name} after a 45 s cold start, 4 clients, 50 ms calls ({formula})")
    for row in asked.itertuples():
        print(f"  t={row.ts:6.1f} s  {row.previous:>9} -> {row.placement:<9} {row.reason}")
    peak = max(counts) if counts else 0
    print(f"  most replicas asked for: {peak}")
    return bool(counts) and peak <= 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    args = parser.parse_args()
    ok = windows(args.scenario)
    ok &= cold_start(args.scenario, "kpa", f"formula: ceil(4 / 0.7) = {math.ceil(4 / 0.7)}")
    ok &= cold_start(args.scenario, "hpa", f"formula: ceil(4 / 0.8) = {math.ceil(4 / 0.8)}")
    print("\nall readings within 1 % of the truth" if ok else "\nSOME READINGS ARE OFF")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
