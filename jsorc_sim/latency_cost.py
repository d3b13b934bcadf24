"""Latency beside cost: one compact table per scenario whatever metrics an experiment lists.

A policy that buys latency with replicas or node memory looks good on a latency table alone,
so every experiment also reports, per scenario, app, grid point and policy, the mean and 95 %
interval over seeds of walker latency (mean and p95) beside what it cost: replica
core-seconds, node GB·s, placement changes and out-of-memory events. `frame` builds it from
a summary (jsorc_sim.experiment.summarise: one row per group and metric) and is what
`latency_cost.csv` holds; `format_table` is what the experiment prints. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

METRICS = ("average_latency", "95th_latency", "replica_core_s", "node_memory_gb_s",
           "placement_changes", "oom_events")
HEADERS = {"average_latency": "mean ms", "95th_latency": "p95 ms",
           "replica_core_s": "replica core·s", "node_memory_gb_s": "node GB·s",
           "placement_changes": "changes", "oom_events": "OOM"}
_STATS = ("n", "mean", "std", "ci95_low", "ci95_high")


def frame(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per group of `summary` (every column but the metric and its statistics:
    scenario, app, grid fields, policy), in its order; per metric of METRICS its `_mean`,
    `_ci95_low` and `_ci95_high` (NaN without two seeds with a value), and `n`, the most
    seeds any of them has a value on."""
    import pandas as pd

    keys = [c for c in summary.columns if c not in ("metric", *_STATS)]
    columns = [*keys, "n", *(f"{m}_{s}" for m in METRICS for s in ("mean", "ci95_low",
                                                                    "ci95_high"))]
    mine = summary[summary["metric"].isin(METRICS)] if len(summary) else summary
    if mine.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for group, rows_of in mine.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
        by_metric = rows_of.set_index("metric")
        row["n"] = int(by_metric["n"].max())
        for metric in METRICS:
            for stat in ("mean", "ci95_low", "ci95_high"):
                row[f"{metric}_{stat}"] = float(by_metric[stat].to_dict().get(metric, math.nan))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def format_table(table: pd.DataFrame, seeds: Sequence[int], order: Sequence[str] = ()) -> str:
    """The table a person reads: a block per scenario, a row per app, grid point and policy
    (apps and grid points as they first appear, policies in `order` first: the experiment
    file's), each metric as "mean ± 95 % CI half-width" (the mean alone with one seed; "-"
    without a value)."""
    if table.empty:
        return "latency and cost: no results"
    over = f"one seed (no CI): seed {seeds[0]}" if len(seeds) == 1 else \
        f"mean ± 95 % CI half-width over seeds {', '.join(map(str, seeds))}"
    stats = tuple(f"{m}_" for m in METRICS)
    keys = [c for c in table.columns if c not in ("scenario", "n", "policy")
            and not c.startswith(stats)] + ["policy"]
    blocks = [f"latency and cost ({over})"]
    rank = {p: i for i, p in enumerate(order)}
    for scenario, rows in table.groupby("scenario", sort=False):
        place = {k: {v: i for i, v in enumerate(dict.fromkeys(rows[k].astype(str)))}
                 for k in keys if k != "policy"}
        sort_by = [rows[k].astype(str).map(place[k]) for k in place]
        sort_by.append(rows["policy"].map(lambda p: rank.get(p, len(rank))))
        position = sorted(range(len(rows)), key=lambda i: tuple(int(s.iloc[i]) for s in sort_by))
        rows = rows.iloc[position]
        shown = rows[keys].astype(str).reset_index(drop=True)
        # A column that only says "every app" (or a grid field this scenario lacks) is noise.
        shown = shown.drop(columns=[k for k in keys if k != "policy" and set(shown[k]) <= {
            "all", "None", "nan", ""}])
        for metric in METRICS:
            shown[HEADERS[metric]] = [_cell(r, metric) for _, r in rows.iterrows()]
        blocks.append(f"scenario {scenario}\n{shown.to_string(index=False)}")
    return "\n\n".join(blocks)


def _cell(row: pd.Series, metric: str) -> str:
    mean, high = row[f"{metric}_mean"], row[f"{metric}_ci95_high"]
    if mean is None or math.isnan(mean):
        return "-"
    digits = 0 if metric in ("placement_changes", "oom_events") or abs(mean) >= 1000 else 1
    text = f"{mean:,.{digits}f}"
    if high is not None and not math.isnan(high):
        text += f" ± {high - mean:,.{digits}f}"
    return text
