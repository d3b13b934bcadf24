"""The comparison's tables, Pareto plots and targets (the report of `jsorc-sim compare`).

Per workload cell (a workload, an app or `all`, a grid point) every policy's means over seeds:
mean and p95 walker latency, replica core-seconds, node GB·s, placement changes,
out-of-memory events and the objective; the regret against the clairvoyant bound (the
objective minus the bound's, on the bound's seeds, paired: same seeds, same arrivals); and
whether the policy is on the Pareto front. The front is over p95 latency, replica
core-seconds and node GB·s together: a policy is dominated when another is no worse on all
three and better on one.

The issue's targets, each with PASS / FALL SHORT and its figures:
1. model_based on the Pareto front against the tuned baselines in at least 90 % of cells;
2. against the best tuned baseline (the lowest objective: what every baseline was tuned for),
   at no more replica core-seconds, at least 20 % lower p95 on 6 of the 8 loadtest apps at 8
   clients and on the LLM trace;
3. within 2 % of the hindsight best static placement at one client (objective; the mean
   latency gap is shown beside it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jsorc_sim.compare import LATENCY_COST, Comparison, Tuned
from jsorc_sim.tune import parse_objective

OURS = "model_based"
BOUNDS = ("clairvoyant", "best static")
TABLE_COLUMNS = {"average_latency": "mean ms", "95th_latency": "p95 ms",
                 "replica_core_s": "core·s", "node_memory_gb_s": "node GB·s",
                 "placement_changes": "changes", "oom_events": "OOM"}


@dataclass
class Report:
    text: str
    cells: pd.DataFrame  # one row per workload cell and policy (means over seeds)
    verdicts: list[str]
    figures: list[Path] = field(default_factory=list)
    wall_s: float = 0.0


def build(c: Comparison, tuned: Mapping[str, Tuned], results: Mapping[str, Any],
          bounds: Sequence[Mapping[str, Any]], out: Path, *, notes: Sequence[str] = (),
          svg: bool = False) -> Report:
    """Tables, plots and verdicts from the comparison's stages; writes them into `out`."""
    objective = parse_objective(c.objective)
    kinds = {p.label: ("tuned baseline" if p.tuned else p.kind) if p.label != OURS else "ours"
             for p in c.policies}
    if c.learned is not None:
        kinds[c.learned.label] = "learned"
    frames = [_means(label, r.results, objective) for label, r in results.items()]
    cells = pd.concat([f for f in frames if len(f)], ignore_index=True) if frames else \
        pd.DataFrame()
    bound_frame = _bounds(bounds, objective)
    per_seed = pd.concat([_per_seed(label, r.results, objective)
                          for label, r in results.items()], ignore_index=True)
    cells["kind"] = cells["policy"].map(kinds).fillna("baseline")
    cells = _regret(cells, per_seed, bound_frame)
    cells = _fronts(cells)
    all_rows = pd.concat([cells, bound_frame.assign(kind="bound")], ignore_index=True) \
        if len(bound_frame) else cells
    out.mkdir(parents=True, exist_ok=True)
    all_rows.to_csv(out / "cells.csv", index=False)
    tables = _tables(all_rows)
    (out / "tables.txt").write_text(tables + "\n")
    verdicts = targets(cells, bound_frame)
    tuned_text = tuned_table(c, tuned)
    (out / "tuned.json").write_text(json.dumps(
        {k: {"params": v.params, "default_params": v.default_params,
             "objective": {"train_default": v.train_default, "train_tuned": v.train_tuned,
                           "test_default": v.test_default, "test_tuned": v.test_tuned}}
         for k, v in tuned.items()}, indent=2, default=str) + "\n")
    figures = pareto_plots(c, results, out, svg=svg)
    summary = headline_table(cells)
    (out / "summary.txt").write_text(summary + "\n")
    text = "\n\n".join([
        f"Comparison {c.name!r}: objective {c.objective} (lower is better); tuned on "
        f"{_train_text(c)}; every other cell is held out.",
        "Tuned values (jsorc-sim tune, the same train cells and budget for every policy):\n"
        + tuned_text,
        "Per workload cell, means over seeds (regret: objective minus the clairvoyant "
        "bound's, on the bound's seeds; front: on the Pareto front of p95, core·s and "
        "node GB·s):\n" + tables,
        "model_based against the best tuned baseline (lowest objective) per cell:\n" + summary,
        "Targets:\n" + "\n".join(verdicts),
        *notes])
    (out / "report.txt").write_text(text + "\n")
    return Report(text, all_rows, verdicts, figures)


def _train_text(c: Comparison) -> str:
    train = c.tune["train"]
    apps = ", ".join(train.get("apps", [])) or "every app"
    sets = ", ".join(f"{k} = {v}" for k, v in train.get("set", {}).items())
    return f"{Path(train['scenario']).name} ({apps}; {sets}; seeds {train.get('seeds')})"


# ----------------------------------------------------------------------------- frames

def _grid_columns(frame: pd.DataFrame) -> list[str]:
    fixed = {"cell", "scenario", "app", "policy", "policy_name", "params", "seed", "trace",
             "status", "error", "metric", "value"}
    return [col for col in frame.columns if col not in fixed]


def _per_seed(label: str, results: pd.DataFrame, objective: Any) -> pd.DataFrame:
    """One row per cell run: the latency-and-cost metrics and the objective."""
    if not len(results):
        return pd.DataFrame()
    grid = _grid_columns(results)
    wide = results.pivot_table(index=["app", *grid, "policy", "seed"], columns="metric",
                               values="value", aggfunc="first", dropna=False).reset_index()
    wide.columns.name = None
    wide["objective"] = [objective({k: _num(row.get(k)) for k in objective.names})
                         for row in wide.to_dict("records")]
    wide.insert(0, "workload", label)
    return wide


def _means(label: str, results: pd.DataFrame, objective: Any) -> pd.DataFrame:
    wide = _per_seed(label, results, objective)
    if not len(wide):
        return wide
    grid = _grid_columns(results)
    keep = [m for m in (*LATENCY_COST, "objective") if m in wide.columns]
    wide = wide.replace([np.inf, -np.inf], np.nan)
    means = wide.groupby(["workload", "app", *grid, "policy"], sort=False, dropna=False)[keep] \
        .mean().reset_index()
    means["seeds"] = wide.groupby(["workload", "app", *grid, "policy"], sort=False,
                                  dropna=False)["seed"].nunique().to_numpy()
    return means


def _bounds(bounds: Sequence[Mapping[str, Any]], objective: Any) -> pd.DataFrame:
    if not bounds:
        return pd.DataFrame()
    frame = pd.DataFrame(list(bounds))
    frame["objective"] = [objective({k: _num(row.get(k)) for k in objective.names})
                          for row in frame.to_dict("records")]
    keys = [c for c in frame.columns if c not in (*LATENCY_COST, "objective", "schedule",
                                                  "seed")]
    keep = [m for m in (*LATENCY_COST, "objective") if m in frame.columns]
    means = frame.groupby(keys, sort=False, dropna=False)[keep].mean().reset_index()
    means["seeds"] = frame.groupby(keys, sort=False, dropna=False)["seed"].nunique().to_numpy()
    means.attrs["seeds"] = sorted(frame["seed"].unique().tolist())
    means.attrs["per_seed"] = frame
    return means


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _cell_keys(frame: pd.DataFrame) -> list[str]:
    skip = {*LATENCY_COST, "objective", "policy", "seeds", "kind", "regret", "regret_pct",
            "front", "front_vs_tuned", "schedule", "seed"}
    return [c for c in frame.columns if c not in skip]


def _regret(cells: pd.DataFrame, per_seed: pd.DataFrame, bounds: pd.DataFrame
            ) -> pd.DataFrame:
    """Objective minus the clairvoyant bound's, both on the bound's seeds (paired)."""
    cells = cells.copy()
    cells["regret"] = np.nan
    cells["regret_pct"] = np.nan
    if not len(bounds) or not len(per_seed):
        return cells
    raw = bounds.attrs["per_seed"]
    clair = raw[raw["policy"] == "clairvoyant"]
    keys = [k for k in _cell_keys(cells) if k in clair.columns]
    merged = per_seed.merge(clair[[*keys, "seed", "objective"]], on=[*keys, "seed"],
                            suffixes=("", "_bound"))
    if not len(merged):
        return cells
    merged["regret"] = merged["objective"] - merged["objective_bound"]
    merged["regret_pct"] = 100.0 * merged["regret"] / merged["objective_bound"]
    means = merged.groupby([*keys, "policy"], dropna=False)[["regret", "regret_pct"]].mean() \
        .reset_index()
    out = cells.drop(columns=["regret", "regret_pct"]).merge(means, on=[*keys, "policy"],
                                                             how="left")
    return out


def dominated(points: np.ndarray, by: np.ndarray) -> np.ndarray:
    """For each row of `points` (costs, lower better), whether some row of `by` is no worse in
    every column and strictly better in one. NaN rows are never dominating; a NaN row is
    dominated by any finite row (no data is no better than data)."""
    result = np.zeros(len(points), dtype=bool)
    ok_by = by[np.isfinite(by).all(axis=1)]
    for i, p in enumerate(points):
        if not np.isfinite(p).all():
            result[i] = len(ok_by) > 0
            continue
        le = (ok_by <= p).all(axis=1)
        lt = (ok_by < p).any(axis=1)
        result[i] = bool((le & lt).any())
    return result


FRONT = ("95th_latency", "replica_core_s", "node_memory_gb_s")


def _fronts(cells: pd.DataFrame) -> pd.DataFrame:
    """`front`: not dominated by any other policy of its cell; `front_vs_tuned`: not
    dominated by a tuned baseline (the target's test)."""
    cells = cells.copy()
    cells["front"] = False
    cells["front_vs_tuned"] = False
    for _, group in cells.groupby(_cell_keys(cells), dropna=False, sort=False):
        pts = group[list(FRONT)].to_numpy(dtype=float)
        cells.loc[group.index, "front"] = ~dominated(pts, pts)
        tuned = group[group["kind"] == "tuned baseline"][list(FRONT)].to_numpy(dtype=float)
        cells.loc[group.index, "front_vs_tuned"] = ~dominated(pts, tuned)
    return cells


# ----------------------------------------------------------------------------- tables

def _fmt(value: Any, digits: int = 1) -> str:
    number = _num(value)
    if number is None:
        return "no data"
    return f"{number:,.{digits}f}"


def _cell_title(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    parts = [str(row["workload"])]
    if str(row.get("app", "all")) != "all":
        parts.append(str(row["app"]))
    parts += [f"{k.rsplit('.', 1)[-1]} = {row[k]:g}" if isinstance(row[k], float)
              else f"{k.rsplit('.', 1)[-1]} = {row[k]}" for k in keys
              if k not in ("workload", "app") and pd.notna(row[k])]
    return ", ".join(parts)


def _tables(rows: pd.DataFrame) -> str:
    keys = [k for k in _cell_keys(rows) if k in rows.columns]
    blocks = []
    for _, group in rows.groupby(keys, dropna=False, sort=False):
        first = {str(k): v for k, v in group.iloc[0].to_dict().items()}
        table = pd.DataFrame({"policy": group["policy"], "kind": group["kind"]})
        for metric, name in TABLE_COLUMNS.items():
            digits = 0 if metric in ("placement_changes", "oom_events") else 1
            table[name] = [_fmt(v, digits) for v in group.get(metric, pd.Series(
                [np.nan] * len(group), index=group.index))]
        table["objective"] = [_fmt(v) for v in group["objective"]]
        regret = _column(group, "regret")
        table["regret"] = [f"{_fmt(r)} ({_fmt(p)} %)" if _num(r) is not None else ""
                           for r, p in zip(regret, _column(group, "regret_pct"), strict=True)]
        table["front"] = ["yes" if f is True else "" for f in _column(group, "front")]
        order = np.argsort(group["objective"].fillna(np.inf).to_numpy(), kind="stable")
        table = table.iloc[order]
        blocks.append(_cell_title(first, keys) + "\n" + table.to_string(index=False))
    return "\n\n".join(blocks)


def _column(group: pd.DataFrame, name: str) -> list[Any]:
    return list(group[name]) if name in group.columns else [np.nan] * len(group)


def _best_baseline(group: pd.DataFrame) -> pd.Series | None:
    base = group[(group["kind"] == "tuned baseline") & group["objective"].notna()]
    if not len(base):
        return None
    best: pd.Series = base.iloc[int(np.argmin(base["objective"].to_numpy(dtype=float)))]
    return best


def headline_table(cells: pd.DataFrame) -> str:
    keys = [k for k in _cell_keys(cells) if k in cells.columns]
    rows = []
    for _, group in cells.groupby(keys, dropna=False, sort=False):
        ours = group[group["policy"] == OURS]
        best = _best_baseline(group)
        if not len(ours) or best is None:
            continue
        o = ours.iloc[0]
        lower = 100.0 * (1.0 - o["95th_latency"] / best["95th_latency"]) \
            if _num(best["95th_latency"]) else np.nan
        ratio = o["replica_core_s"] / best["replica_core_s"] if _num(best["replica_core_s"]) \
            else np.nan
        rows.append({"cell": _cell_title({str(k): v for k, v in o.to_dict().items()}, keys),
                     "best tuned baseline": best["policy"],
                     "p95 ours": _fmt(o["95th_latency"]), "p95 base": _fmt(best["95th_latency"]),
                     "p95 lower": f"{_fmt(lower)} %", "core·s ours/base": _fmt(ratio, 2),
                     "front": "yes" if bool(o["front_vs_tuned"]) else "no",
                     "regret": f"{_fmt(o.get('regret_pct'))} %"
                     if _num(o.get("regret_pct")) is not None else ""})
    return pd.DataFrame(rows).to_string(index=False) if rows else "(no cell has both)"


def tuned_table(c: Comparison, tuned: Mapping[str, Tuned]) -> str:
    rows = []
    for label, t in tuned.items():
        spec = next(p for p in c.policies if p.label == label)
        values = ", ".join(f"{k} {_show(_get(t.default_params, k))} → {_show(_get(t.params, k))}"
                           for k in spec.space)
        rows.append({"policy": label, "tuned (default → tuned)": values,
                     "train objective": f"{_fmt(t.train_default)} → {_fmt(t.train_tuned)}",
                     "test objective": f"{_fmt(t.test_default)} → {_fmt(t.test_tuned)}"})
    return pd.DataFrame(rows).to_string(index=False) if rows else "(nothing tuned)"


def _get(params: Mapping[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return "default"
        value = value[part]
    return value


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------- targets

def targets(cells: pd.DataFrame, bounds: pd.DataFrame) -> list[str]:
    keys = [k for k in _cell_keys(cells) if k in cells.columns]
    lines = []
    ours = cells[cells["policy"] == OURS]
    on = int(ours["front_vs_tuned"].sum())
    share = on / len(ours) if len(ours) else math.nan
    lines.append(f"{_verdict(share >= 0.9)}: model_based on the Pareto front against the tuned "
                 f"baselines in {on} of {len(ours)} workload cells ({_fmt(100 * share, 0)} %; "
                 "target 90 %)")
    checked: list[tuple[str, str, bool]] = []  # (loadtest8 | llm, text, met)
    for _, group in cells.groupby(keys, dropna=False, sort=False):
        first = group.iloc[0]
        loadtest8 = first["workload"] == "loadtest" and _clients(first) == 8
        llm = "llm" in str(first["workload"])
        o = group[group["policy"] == OURS]
        best = _best_baseline(group)
        if not (loadtest8 or llm) or not len(o) or best is None:
            continue
        row = o.iloc[0]
        lower = 1.0 - row["95th_latency"] / best["95th_latency"]
        ok = bool(row["replica_core_s"] <= best["replica_core_s"] and lower >= 0.2)
        checked.append(("llm" if llm else "loadtest8", (
            f"{row['app'] if loadtest8 else first['workload']}: {_fmt(100 * lower)} % lower "
            f"p95 than {best['policy']}, core·s {_fmt(row['replica_core_s'], 0)} vs "
            f"{_fmt(best['replica_core_s'], 0)}"), ok))
    apps = [ok for kind, _, ok in checked if kind == "loadtest8"]
    llm_ok = [ok for kind, _, ok in checked if kind == "llm"]
    lines.append(f"{_verdict(sum(apps) >= 6)}: >= 20 % lower p95 at no more core·s than the "
                 f"best tuned baseline on {sum(apps)} of {len(apps)} loadtest apps at 8 "
                 "clients (target 6 of 8)")
    lines.append(f"{_verdict(all(llm_ok))}: the same on the LLM trace" if llm_ok
                 else "NOT MEASURED: the LLM trace is not in this comparison")
    lines += [f"  {'met' if ok else 'missed'}: {text}" for _, text, ok in checked]
    gaps = []
    if len(bounds):
        static = bounds[bounds["policy"] == "best static"]
        for _, group in cells.groupby(keys, dropna=False, sort=False):
            first = group.iloc[0]
            if first["workload"] != "loadtest" or _clients(first) != 1:
                continue
            o = group[group["policy"] == OURS]
            match = static.merge(o[keys], on=[k for k in keys if k in static.columns])
            if not len(o) or not len(match):
                continue
            gap = o.iloc[0]["objective"] / match.iloc[0]["objective"] - 1.0
            mean_gap = o.iloc[0]["average_latency"] / match.iloc[0]["average_latency"] - 1.0
            gaps.append((str(first["app"]), gap, mean_gap))
    if gaps:
        worst = max(g for _, g, _ in gaps)
        lines.append(f"{_verdict(worst <= 0.02)}: within 2 % of hindsight best static at one "
                     f"client on {sum(g <= 0.02 for _, g, _ in gaps)} of {len(gaps)} apps "
                     f"(objective; worst {_fmt(100 * worst)} %)")
        lines += [f"  {app}: objective {_fmt(100 * g, 2)} %, mean latency {_fmt(100 * m, 2)} % "
                  "against best static" for app, g, m in gaps]
    else:
        lines.append("NOT MEASURED: no bound at one client")
    return lines


def _clients(row: pd.Series) -> Any:
    for key in row.index:
        if key.endswith("clients"):
            return row[key]
    return None


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FALL SHORT"


# ----------------------------------------------------------------------------- plots

def pareto_plots(c: Comparison, results: Mapping[str, Any], out: Path, *,
                 svg: bool = False) -> list[Path]:
    """A Pareto plot per workload (and per grid point): p95 against replica core-seconds and
    node GB·s, a point per policy with its 95 % CI both ways, the front drawn."""
    from jsorc_sim.plot_cost import cost_plot

    figures = []
    for label, result in results.items():
        summary = result.summary
        if not len(summary):
            continue
        grid = [col for col in summary.columns if col not in
                ("scenario", "app", "policy", "metric", "n", "mean", "std", "ci95_low",
                 "ci95_high")]
        points = summary.groupby(grid, dropna=False) if grid else [((), summary)]
        for values, part in points:
            values = values if isinstance(values, tuple) else (values,)
            suffix = "".join(f"_{k.rsplit('.', 1)[-1]}{v}" for k, v in
                             zip(grid, values, strict=False))
            path = out / f"pareto_{label}{suffix}.png"
            cost_plot(part, path, latency="95th_latency")
            figures.append(path)
            if svg:
                cost_plot(part, path.with_suffix(".svg"), latency="95th_latency")
    return figures
