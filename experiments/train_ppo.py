"""Train the learned baseline: PPO (stable-baselines3) on JSORC's loadtest, saved as a folder.

    python experiments/train_ppo.py --apps flow_analysis --clients 8 --timesteps 20000 \
        --seed 0 --out runs/ppo/flow_analysis

`--apps a,b,c` trains one agent for several apps (each episode draws one). The folder holds
`model.zip` and `agent.json`; run it with `--policy experiments/ppo_policy.py:PPOPolicy
--param model=FOLDER`, or from Python with `jsorc_sim.rl.load_agent(FOLDER)`. Progress goes to
stderr; the folder is printed on stdout. Needs the `rl` extra (pip install -e '.[rl]').
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenarios" / "jsorc_loadtest.toml"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    parser.add_argument("--apps", default="flow_analysis",
                        help="comma-separated apps; one agent serves them all")
    parser.add_argument("--clients", type=positive_int, default=None,
                        help="closed-loop clients (workload.clients; default the scenario's)")
    parser.add_argument("--timesteps", type=positive_int, default=20_000,
                        help="control intervals of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=None,
                        help="simulated seconds per episode (default the scenario's)")
    parser.add_argument("--max-replicas", type=positive_int, default=8)
    parser.add_argument("--objective", default=None,
                        help="per-interval cost, the tune objective's syntax "
                             "(default: 95th_latency + 0.05 * replica_core_s)")
    parser.add_argument("--out", type=Path, required=True, help="folder to save the agent in")
    args = parser.parse_args(argv)

    from jsorc_sim.rl import DEFAULT_OBJECTIVE, train_ppo

    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    overrides = {"workload.clients": args.clients} if args.clients is not None else None
    try:
        folder = train_ppo(args.scenario, apps=apps, overrides=overrides,
                           timesteps=args.timesteps, seed=args.seed, duration_s=args.duration,
                           objective=args.objective or DEFAULT_OBJECTIVE,
                           max_replicas=args.max_replicas, out=args.out)
    except (ImportError, ValueError) as exc:
        print(f"train_ppo: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
