"""The comparison's tables, Pareto plots and targets (the report of `jsorc-sim compare`).

Per workload cell (a workload, an app or `all`, a grid point) every policy's means over seeds:
mean and p95 walker latency, replica core-seconds, node GB·s, placement changes,
out-of-memory events and the objective. A policy whose run failed or completed no walker on
some seed has no mean there ("no data", with the seeds that did run counted in `seeds`): a
mean over the seeds that happened to work would flatter it. Beside them, the regret against
the clairvoyant bound (the objective minus the bound's, on the bound's seeds, paired: same
seeds, same arrivals) and whether the policy is on the Pareto front. The front is over p95
latency, replica core-seconds and node GB·s together: a policy is dominated when another is
no worse in all three and better in one (the two-dimensional fronts, p95 against each cost
alone, are counted beside it and drawn in the plots).

The issue's targets, each with PASS / FALL SHORT (or NOT MEASURED) and its figures, for the
policy of kind "ours" and the cells the file's `[targets]` names:
1. on the Pareto front against the tuned baselines in at least 90 % of cells;
2. against the best tuned baseline (the lowest objective: what every baseline was tuned for),
   at no more replica core-seconds, at least 20 % lower p95 on 6 of the 8 loadtest apps at 8
   clients and on the LLM trace;
3. within 2 % of the hindsight best static placement at one client (objective, paired per
   seed on the bound's seeds; the mean latency gap is shown beside it).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from jsorc_sim import outputs
from jsorc_sim.compare import KIND, LATENCY_COST, Comparison, Tuned
from jsorc_sim.tune import Objective, parse_objective

if TYPE_CHECKING:
    from jsorc_sim.experiment import ExperimentResult

TABLE_COLUMNS = {"average_latency": "mean ms", "95th_latency": "p95 ms",
                 "replica_core_s": "core·s", "node_memory_gb_s": "node GB·s",
                 "placement_changes": "changes", "oom_events": "OOM"}
FRONT = ("95th_latency", "replica_core_s", "node_memory_gb_s")
TUNED = "tuned baseline"
REPORT_FILES = ("comparison.toml", "report.txt", "tables.txt", "summary.txt", "cells.csv",
                "tuned.json")


@dataclass
class Report:
    text: str
    cells: pd.DataFrame  # one row per workload cell and policy (means over seeds)
    verdicts: list[str]
    figures: list[Path] = field(default_factory=list)
    wall_s: float = 0.0


def file_names(c: Comparison) -> list[str]:
    """Every file the report writes into the output folder (checked before anything runs)."""
    import itertools

    names = list(REPORT_FILES)
    for w in c.workloads:
        points = itertools.product(*w.grid.values()) if w.grid else [()]
        for values in points:
            names.append(_figure_name(w.label, tuple(w.grid), tuple(values)))
    return names


def _figure_name(label: str, keys: Sequence[str], values: Sequence[Any]) -> str:
    suffix = "".join(f"_{k.rsplit('.', 1)[-1]}{v}" for k, v in zip(keys, values, strict=True))
    return f"pareto_{label}{suffix}.png"


def build(c: Comparison, tuned: Mapping[str, Tuned], results: Mapping[str, ExperimentResult],
          bounds: Sequence[Mapping[str, Any]], out: Path, *, notes: Sequence[str] = (),
          svg: bool = False) -> Report:
    """Tables, plots and verdicts from the comparison's stages; writes them into `out`
    (only files of the report's names, vouched for by its manifest: jsorc_sim.outputs)."""
    objective = parse_objective(c.objective)
    kinds = {p.label: TUNED if p.kind == "baseline" and p.tuned else p.kind
             for p in c.policies}
    if c.learned is not None:
        kinds[c.learned.label] = "learned"
    per_seed = pd.concat([_per_seed(label, r.results, objective)
                          for label, r in results.items() if len(r.results)],
                         ignore_index=True) if results else pd.DataFrame()
    cells = _means(per_seed)
    bound_seed = _bound_seeds(bounds, objective)
    bound_frame = _means(bound_seed) if len(bound_seed) else pd.DataFrame()
    if len(cells):
        cells["kind"] = cells["policy"].map(kinds).fillna("baseline")
        cells = _regret(cells, per_seed, bound_seed)
        cells = _fronts(cells)
    all_rows = pd.concat([cells, bound_frame.assign(kind="bound")], ignore_index=True) \
        if len(bound_frame) else cells
    tables = _tables(all_rows) if len(all_rows) else "(no cell ran)"
    verdicts = targets(c, cells, per_seed, bound_seed)
    summary = headline_table(c, cells)
    text = "\n\n".join([
        f"Comparison {c.name!r}: objective {c.objective} (lower is better); tuned on "
        f"{_train_text(c)}; every other cell is held out.",
        "Tuned values (jsorc-sim tune, the same train cells and budget for every policy):\n"
        + tuned_table(c, tuned),
        "Per workload cell, means over seeds (regret: objective minus the clairvoyant "
        "bound's, on the bound's seeds; front: on the Pareto front of p95, core·s and "
        "node GB·s):\n" + tables,
        f"{c.ours} against the best tuned baseline (lowest objective) per cell:\n" + summary,
        "Targets:\n" + "\n".join(verdicts),
        *(["Notes:\n" + "\n".join(f"- {n}" for n in notes)] if notes else [])])
    tuned_json = json.dumps(
        {k: {"params": v.params, "default_params": v.default_params,
             "objective": {"train_default": v.train_default, "train_tuned": v.train_tuned,
                           "test_default": v.test_default, "test_tuned": v.test_tuned}}
         for k, v in tuned.items()}, indent=2, default=str) + "\n"
    writers: dict[str, Callable[[Path], object]] = {
        "comparison.toml": _text(c.text), "report.txt": _text(text + "\n"),
        "tables.txt": _text(tables + "\n"), "summary.txt": _text(summary + "\n"),
        "cells.csv": lambda p: all_rows.to_csv(p, index=False), "tuned.json": _text(tuned_json)}
    with tempfile.TemporaryDirectory(prefix="jsorc-compare-") as scratch:
        figures = pareto_plots(c, results, Path(scratch), svg=svg)
        writers.update({f.name: _copy(f) for f in figures})
        outputs.write(out, writers, KIND)
    return Report(text, all_rows, verdicts, [out / f.name for f in figures])


def _text(content: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(content)


def _copy(source: Path) -> Callable[[Path], object]:
    return lambda path: shutil.copyfile(source, path)


def _train_text(c: Comparison) -> str:
    train = c.tune["train"]
    apps = ", ".join(train.get("apps", [])) or "every app"
    sets = ", ".join(f"{k} = {v}" for k, v in train.get("set", {}).items())
    return f"{Path(train['scenario']).name} ({apps}; {sets}; seeds {train.get('seeds')})"


# ----------------------------------------------------------------------------- frames

_FIXED = {"cell", "scenario", "app", "policy", "policy_name", "params", "seed", "trace",
          "status", "error", "metric", "value"}


def _per_seed(label: str, results: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """One row per cell run: the metrics, `ok` (ran and completed a walker) and the
    objective (NaN where not ok)."""
    grid = [col for col in results.columns if col not in _FIXED]
    index = ["app", *grid, "policy", "seed"]
    # Only the runs there are (a pivot_table with dropna=False would invent every
    # combination of the index levels); a failed run keeps its row, its values NaN.
    wide = results.groupby([*index, "metric"], sort=False)["value"].first() \
        .unstack("metric").reset_index()
    wide.columns.name = None
    status = results.drop_duplicates(index).set_index(index)["status"]
    wide["ok"] = (status.reindex(pd.MultiIndex.from_frame(wide[index])) == "ok").to_numpy()
    wide["objective"] = [objective({k: _num(row.get(k)) for k in objective.names})
                         for row in wide.to_dict("records")]
    wide.loc[~np.isfinite(wide["objective"]), "ok"] = False
    wide.loc[~wide["ok"], "objective"] = np.nan
    wide.insert(0, "workload", label)
    return wide


def _bound_seeds(bounds: Sequence[Mapping[str, Any]], objective: Objective) -> pd.DataFrame:
    if not bounds:
        return pd.DataFrame()
    frame = pd.DataFrame(list(bounds)).drop(columns=["schedule"], errors="ignore")
    frame["objective"] = [objective({k: _num(row.get(k)) for k in objective.names})
                          for row in frame.to_dict("records")]
    frame["ok"] = np.isfinite(frame["objective"])
    return frame


def _keys(frame: pd.DataFrame) -> list[str]:
    """The columns that name a cell: workload, app and the grid point."""
    skip = {*LATENCY_COST, "objective", "policy", "seeds", "kind", "regret", "regret_pct",
            "front", "front_vs_tuned", "front_core", "front_node", "schedule", "seed", "ok",
            "seeds_ok"}
    metric_like = set(_FIXED) | {"throughput", "50th_latency", "90th_latency", "99th_latency",
                                 "replica_memory_gb_s", "peak_node_memory_mb", "cold_starts",
                                 "failed_requests", "failed_calls", "policy_errors", "arrivals",
                                 "unfinished_requests"}
    return [c for c in frame.columns if (c not in skip and c not in metric_like)
            or c in ("workload", "app")]


def _means(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per cell and policy; no data where some seed was not ok."""
    if not len(per_seed):
        return pd.DataFrame()
    keys = [*_keys(per_seed), "policy"]
    metrics = [m for m in (*LATENCY_COST, "objective") if m in per_seed.columns]
    groups = per_seed.groupby(keys, sort=False, dropna=False)
    means = groups[metrics].mean().reset_index()
    means["seeds"] = groups["seed"].nunique().to_numpy()
    means["seeds_ok"] = groups["ok"].sum().to_numpy().astype(int)
    failed = means["seeds_ok"] < means["seeds"]
    means.loc[failed, metrics] = np.nan
    return means


def _strict_mean(values: pd.Series) -> float:
    """The mean, or NaN when any value is missing (a failed seed is no better than data)."""
    return float(values.mean()) if values.notna().all() else math.nan


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _regret(cells: pd.DataFrame, per_seed: pd.DataFrame, bound_seed: pd.DataFrame
            ) -> pd.DataFrame:
    """Objective minus the clairvoyant bound's, both on the bound's seeds (paired)."""
    cells = cells.copy()
    cells["regret"] = np.nan
    cells["regret_pct"] = np.nan
    if not len(bound_seed):
        return cells
    clair = bound_seed[bound_seed["policy"] == "clairvoyant"]
    keys = [k for k in _keys(cells) if k in clair.columns]
    merged = per_seed.merge(clair[[*keys, "seed", "objective"]], on=[*keys, "seed"],
                            suffixes=("", "_bound"))
    if not len(merged):
        return cells
    merged["regret"] = merged["objective"] - merged["objective_bound"]
    merged["regret_pct"] = 100.0 * merged["regret"] / merged["objective_bound"]
    # a NaN (failed) seed makes the regret NaN: no flattering mean over the seeds that ran
    means = merged.groupby([*keys, "policy"], dropna=False)[["regret", "regret_pct"]] \
        .agg(_strict_mean).reset_index()
    return cells.drop(columns=["regret", "regret_pct"]).merge(means, on=[*keys, "policy"],
                                                              how="left")


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


def _fronts(cells: pd.DataFrame) -> pd.DataFrame:
    """`front`: not dominated by any other policy of its cell (p95, core·s, node GB·s);
    `front_vs_tuned`: not dominated by a tuned baseline (the target's test); `front_core` and
    `front_node`: the same against the tuned baselines with one cost only."""
    cells = cells.copy()
    for name in ("front", "front_vs_tuned", "front_core", "front_node"):
        cells[name] = False
    for _, group in cells.groupby(_keys(cells), dropna=False, sort=False):
        pts = group[list(FRONT)].to_numpy(dtype=float)
        cells.loc[group.index, "front"] = ~dominated(pts, pts)
        tuned = group[group["kind"] == TUNED]
        for name, cols in (("front_vs_tuned", list(FRONT)),
                           ("front_core", ["95th_latency", "replica_core_s"]),
                           ("front_node", ["95th_latency", "node_memory_gb_s"])):
            cells.loc[group.index, name] = ~dominated(group[cols].to_numpy(dtype=float),
                                                      tuned[cols].to_numpy(dtype=float))
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
    for k in keys:
        if k in ("workload", "app") or not pd.notna(row.get(k)):
            continue
        value = row[k]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{k.rsplit('.', 1)[-1]} = {shown}")
    return ", ".join(parts)


def _column(group: pd.DataFrame, name: str) -> list[Any]:
    return list(group[name]) if name in group.columns else [np.nan] * len(group)


def _tables(rows: pd.DataFrame) -> str:
    keys = _keys(rows)
    blocks = []
    for _, group in rows.groupby(keys, dropna=False, sort=False):
        first = {str(k): v for k, v in group.iloc[0].to_dict().items()}
        table = pd.DataFrame({"policy": group["policy"], "kind": group["kind"]})
        for metric, name in TABLE_COLUMNS.items():
            digits = 0 if metric in ("placement_changes", "oom_events") else 1
            table[name] = [_fmt(v, digits) for v in _column(group, metric)]
        table["objective"] = [_fmt(v) for v in group["objective"]]
        table["seeds"] = [f"{int(ok)}/{int(n)}" if _num(n) is not None else ""
                          for ok, n in zip(_column(group, "seeds_ok"), _column(group, "seeds"),
                                           strict=True)]
        table["regret"] = [f"{_fmt(r)} ({_fmt(p)} %)" if _num(r) is not None else ""
                           for r, p in zip(_column(group, "regret"),
                                           _column(group, "regret_pct"), strict=True)]
        table["front"] = ["yes" if f is True else "" for f in _column(group, "front")]
        order = np.argsort(group["objective"].fillna(np.inf).to_numpy(), kind="stable")
        blocks.append(_cell_title(first, keys) + "\n"
                      + table.iloc[order].to_string(index=False))
    return "\n\n".join(blocks)


def _best_baseline(group: pd.DataFrame) -> pd.Series | None:
    base = group[(group["kind"] == TUNED) & group["objective"].notna()]
    if not len(base):
        return None
    best: pd.Series = base.iloc[int(np.argmin(base["objective"].to_numpy(dtype=float)))]
    return best


def headline_table(c: Comparison, cells: pd.DataFrame) -> str:
    if not len(cells):
        return "(no cell ran)"
    keys = _keys(cells)
    rows = []
    for _, group in cells.groupby(keys, dropna=False, sort=False):
        ours = group[group["policy"] == c.ours]
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

def _clients(row: pd.Series) -> Any:
    for key in row.index:
        if str(key).endswith("clients"):
            return row[key]
    return None


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FALL SHORT"


def targets(c: Comparison, cells: pd.DataFrame, per_seed: pd.DataFrame,
            bound_seed: pd.DataFrame) -> list[str]:
    """The issue's three targets (the module doc), each a verdict line and its figures."""
    if not len(cells) or c.ours is None:
        return ["NOT MEASURED: no policy of kind \"ours\" ran"]
    t = c.targets
    keys = _keys(cells)
    lines = []
    ours = cells[cells["policy"] == c.ours]
    if len(ours):
        on = int(ours["front_vs_tuned"].sum())
        share = on / len(ours)
        lines.append(
            f"{_verdict(share >= 0.9)}: {c.ours} on the Pareto front (p95, replica core·s, "
            f"node GB·s) against the tuned baselines in {on} of {len(ours)} workload cells "
            f"({_fmt(100 * share, 0)} %; target 90 %); against p95 and core·s alone "
            f"{int(ours['front_core'].sum())}, against p95 and node GB·s alone "
            f"{int(ours['front_node'].sum())}")
    checked: list[tuple[str, str, bool]] = []  # (loadtest | trace, text, met)
    for _, group in cells.groupby(keys, dropna=False, sort=False):
        first = group.iloc[0]
        apps = first["workload"] == t.loadtest and _clients(first) == t.clients
        trace = first["workload"] in t.traces
        o = group[group["policy"] == c.ours]
        best = _best_baseline(group)
        if not (apps or trace) or not len(o):
            continue
        row = o.iloc[0]
        where = str(row["app"]) if apps else str(first["workload"])
        if best is None or _num(row["95th_latency"]) is None:
            checked.append(("apps" if apps else "trace", f"{where}: no data", False))
            continue
        lower = 1.0 - row["95th_latency"] / best["95th_latency"]
        ok = bool(row["replica_core_s"] <= best["replica_core_s"] and lower >= 0.2)
        checked.append(("apps" if apps else "trace", (
            f"{where}: {_fmt(100 * lower)} % lower p95 than {best['policy']}, core·s "
            f"{_fmt(row['replica_core_s'], 0)} vs {_fmt(best['replica_core_s'], 0)}"), ok))
    apps_ok = [ok for kind, _, ok in checked if kind == "apps"]
    trace_ok = [ok for kind, _, ok in checked if kind == "trace"]
    lines.append(f"{_verdict(sum(apps_ok) >= 6)}: >= 20 % lower p95 at no more core·s than the "
                 f"best tuned baseline on {sum(apps_ok)} of {len(apps_ok)} {t.loadtest} apps at "
                 f"{t.clients} clients (target 6 of 8)" if apps_ok else
                 f"NOT MEASURED: no {t.loadtest} cell at {t.clients} clients")
    lines.append(f"{_verdict(all(trace_ok))}: the same on {', '.join(t.traces)} "
                 f"({sum(trace_ok)} of {len(trace_ok)})" if trace_ok else
                 f"NOT MEASURED: {', '.join(t.traces) or 'no trace'} not in this comparison")
    lines += [f"  {'met' if ok else 'missed'}: {text}" for _, text, ok in checked]
    lines += _static_gap(c, per_seed, bound_seed)
    return lines


def _static_gap(c: Comparison, per_seed: pd.DataFrame, bound_seed: pd.DataFrame
                ) -> list[str]:
    """Target 3: ours against the best static placement at one client, per bound seed."""
    t = c.targets
    if not len(bound_seed) or not len(per_seed):
        return ["NOT MEASURED: no bound was computed"]
    static = bound_seed[(bound_seed["policy"] == "best static") &
                        (bound_seed["workload"] == t.loadtest)]
    mine = per_seed[(per_seed["policy"] == c.ours) & (per_seed["workload"] == t.loadtest)]
    keys = [k for k in _keys(static) if k in mine.columns]
    paired = mine.merge(static[[*keys, "seed", "objective", "average_latency"]],
                        on=[*keys, "seed"], suffixes=("", "_static"))
    paired = paired[[_clients(r) == t.one_client for _, r in paired.iterrows()]]
    if not len(paired):
        return [f"NOT MEASURED: no bound at {t.one_client} client(s) on {t.loadtest}"]
    paired["gap"] = paired["objective"] / paired["objective_static"] - 1.0
    paired["mean_gap"] = paired["average_latency"] / paired["average_latency_static"] - 1.0
    gaps = paired.groupby("app", sort=False)[["gap", "mean_gap"]].agg(_strict_mean)
    worst = float(gaps["gap"].max()) if gaps["gap"].notna().all() else math.inf
    met = int((gaps["gap"] <= 0.02).sum())
    seeds = sorted(paired["seed"].unique().tolist())
    lines = [f"{_verdict(worst <= 0.02)}: within 2 % of the hindsight best static placement at "
             f"{t.one_client} client(s) on {met} of {len(gaps)} apps (objective, paired on "
             f"seed(s) {', '.join(map(str, seeds))}; worst {_fmt(100 * worst)} %)"]
    lines += [f"  {app}: objective {_fmt(100 * g.gap, 2)} %, mean latency "
              f"{_fmt(100 * g.mean_gap, 2)} % against best static" for app, g in gaps.iterrows()]
    return lines


# ----------------------------------------------------------------------------- plots

def pareto_plots(c: Comparison, results: Mapping[str, ExperimentResult], folder: Path, *,
                 svg: bool = False) -> list[Path]:
    """A Pareto plot per workload (and per grid point) in `folder`: p95 against replica
    core-seconds and node GB·s, a point per policy with its 95 % CI both ways, the front drawn,
    ours in black."""
    from jsorc_sim.plot_cost import cost_plot

    figures = []
    colours = {c.ours: "black"} if c.ours else None
    for label, result in results.items():
        summary = result.summary
        if not len(summary):
            continue
        grid = [col for col in summary.columns if col not in
                ("scenario", "app", "policy", "metric", "n", "mean", "std", "ci95_low",
                 "ci95_high")]
        parts = list(summary.groupby(grid, dropna=False)) if grid else [((), summary)]
        for values, part in parts:
            values = values if isinstance(values, tuple) else (values,)
            path = folder / _figure_name(label, grid, values)
            cost_plot(part, path, latency="95th_latency", colours=colours)
            figures.append(path)
            if svg:
                cost_plot(part, path.with_suffix(".svg"), latency="95th_latency",
                          colours=colours)
    return figures
