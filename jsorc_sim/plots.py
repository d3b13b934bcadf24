"""Plots of experiments: a metric per app and policy, speed-ups against a baseline, and runs
over time.

Every function takes pandas DataFrames (or run folders) in the shapes of docs/experiments.md
and `Result.save`, draws on its own `matplotlib.figure.Figure` (no pyplot, so no global state
and no display needed), saves it to `path` (PNG or SVG by suffix, written to a temporary name
and renamed, like every file of an experiment) and returns the Figure. Colours follow the
order of first appearance of a policy (or run label), so a policy keeps its colour across the
panels of a figure; red is kept for out-of-memory marks.
"""

from __future__ import annotations

import itertools
import math
import os
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

SUMMARY_COLUMNS = ("scenario", "app", "policy", "metric", "n", "mean", "std", "ci95_low",
                   "ci95_high")
RUN_TABLES = ("requests", "decisions", "timeline", "events")
HIGHER_IS_BETTER = frozenset({"throughput"})
NO_DATA = "no data (OOM)"
OOM_COLOUR = "#d62728"
# tab10 without its red (out of memory is red), then tab20's lighter shades.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
_UNITS = {"throughput": ("throughput", "walker runs/s"),
          "node_memory_gb_s": ("node memory", "GB·s"),
          "replica_memory_gb_s": ("replica memory", "GB·s"),
          "replica_core_s": ("replica cores", "core·s"),
          "peak_node_memory_mb": ("peak node memory", "MB")}
_COUNTS = frozenset({"placement_changes", "cold_starts", "failed_requests", "failed_calls",
                     "oom_events", "policy_errors", "arrivals", "unfinished_requests"})

GridPoint = tuple[Any, ...]


# ---------------------------------------------------------------------- public API


def policy_colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour per policy (or run label), in order: pass it as `colours=` to every plot of
    an experiment so that a policy keeps its colour from figure to figure. Pure."""
    return _with_defaults(None, list(dict.fromkeys(labels)))


def summary_plot(summary: pd.DataFrame, metric: str, path: str | Path, *,
                 colours: Mapping[str, str] | None = None) -> Figure:
    """Grouped bars of `metric`'s mean per app (x) and policy (colour), with 95 % CI error
    bars; one panel per grid point. A NaN mean (no walker succeeded) is a hatched marker.
    `colours` (policy -> colour, e.g. from `policy_colours`) keeps colours across figures."""
    _format(path)
    summary, grid = _check_summary(summary, [metric])
    rows = summary[summary["metric"] == metric]
    policies = _ordered(rows["policy"])
    colours = _with_defaults(colours, _ordered(summary["policy"]))
    points = _grid_points(rows, grid)
    panels = [_select(rows, grid, point) for point in points]
    high = pd.to_numeric(rows["ci95_high"], errors="coerce").fillna(rows["mean"])
    top = _finite_max(high, default=1.0) * 1.12

    fig, axes = _panels(1, len(points), max(len(_x_keys(p)) for p in panels), len(policies))
    any_missing = False
    for ax, point, panel in zip(axes[0], points, panels, strict=True):
        keys = _x_keys(panel)
        for slot, policy in enumerate(policies):
            frame = panel[panel["policy"] == policy]
            if frame.empty:
                continue
            means = _along(frame, keys, "mean")
            err = np.vstack([means - _along(frame, keys, "ci95_low"),
                             _along(frame, keys, "ci95_high") - means])
            any_missing |= _bars(ax, means, _has(frame, keys), slot, len(policies),
                                 colours[policy], policy, top,
                                 yerr=np.where(np.isfinite(err), err, 0.0))
        ax.set_ylim(0, top)
        _x_axis(ax, keys, scenarios=rows["scenario"].nunique() > 1)
        ax.set_title(_point_title(grid, point), fontsize=10)
    axes[0][0].set_ylabel(_metric_label(metric))
    fig.suptitle(f"{_metric_label(metric, unit=False)} by app and policy"
                 f"{_seeds_note(rows)}", fontsize=12)
    _legend(fig, policies, colours, no_data=any_missing)
    return _save(fig, path)


def speedup_plot(summary: pd.DataFrame, baseline: str, path: str | Path,
                 metrics: Sequence[str] = ("average_latency", "throughput", "99th_latency"),
                 *, colours: Mapping[str, str] | None = None) -> Figure:
    """Speed-up of every policy against `baseline` per app (> 1 is better for every metric:
    baseline / policy for latencies and costs, policy / baseline for throughput); one row of
    panels per metric, one column per grid point, a line at 1.0, the baseline left out."""
    _format(path)
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics must be a non-empty sequence of metric names, got {metrics!r}")
    summary, grid = _check_summary(summary, list(metrics))
    known = _ordered(summary["policy"])
    if baseline not in known:
        raise ValueError(f"baseline {baseline!r} is not a policy of the summary "
                         f"(policies: {', '.join(known)})")
    policies = [p for p in known if p != baseline]
    if not policies:
        raise ValueError(f"the summary holds only the baseline {baseline!r}: nothing to compare")
    colours = _with_defaults(colours, known)
    rows = summary[summary["metric"].isin(list(metrics))]
    points = _grid_points(rows, grid)
    panels = [_select(rows, grid, point) for point in points]
    keys = [_x_keys(panel) for panel in panels]  # a column's apps, the same for each metric
    ratios = {m: [_speedups(panel[panel["metric"] == m], m, baseline, k, policies)
                  for panel, k in zip(panels, keys, strict=True)] for m in metrics}

    fig, axes = _panels(len(metrics), len(points), max(map(len, keys)), len(policies))
    any_missing = False
    for r, metric in enumerate(metrics):
        top = max(_finite_max(np.concatenate([v.ravel() for v, _ in ratios[metric]]), 1.0),
                  1.0) * 1.15
        for c, point in enumerate(points):
            ax = axes[r][c]
            values, present = ratios[metric][c]
            for slot, policy in enumerate(policies):
                if not present[:, slot].any():  # not run at this grid point (or no baseline)
                    continue
                any_missing |= _bars(ax, values[:, slot], present[:, slot], slot,
                                     len(policies), colours[policy], policy, top)
            if not present.any():
                ax.text(0.5, 0.5, f"{baseline} was not run here", transform=ax.transAxes,
                        ha="center", va="center", fontsize=9, color="0.3")
            ax.axhline(1.0, color="0.25", linewidth=1.0, linestyle="--", zorder=1,
                       label=f"{baseline} (= 1)")
            ax.set_ylim(0, top)
            _x_axis(ax, keys[c], scenarios=rows["scenario"].nunique() > 1,
                    labels=r == len(metrics) - 1)
            if r == 0:
                ax.set_title(_point_title(grid, point), fontsize=10)
        direction = "policy / baseline" if metric in HIGHER_IS_BETTER else "baseline / policy"
        axes[r][0].set_ylabel(f"{_metric_label(metric, unit=False)}\nspeed-up ({direction})",
                              fontsize=9)
    fig.suptitle(f"Speed-up against {baseline} (> 1 is better){_seeds_note(rows, ci=False)}",
                 fontsize=12)
    extra = [Line2D([], [], color="0.25", linestyle="--", label=f"{baseline} (= 1)")]
    _legend(fig, policies, colours, no_data=any_missing, extra=extra)
    return _save(fig, path)


def timeline_plot(runs: Mapping[str, str | Path], path: str | Path, *, window_s: float = 10,
                  colours: Mapping[str, str] | None = None) -> Figure:
    """Runs over time, one colour per label. Top: walker latency (mean of the successful
    walkers arriving in each `window_s` window). Middle: a row of placement changes per run
    (markers, with the actions and where they went where there is room), also drawn as faint
    dashed lines across the other panels. Bottom: ready replicas of all actions. Out-of-memory
    events are red dotted lines across every panel; the warm-up, when the runs' scenario.toml
    give it, is shaded."""
    _format(path)
    if not runs:
        raise ValueError("runs is empty: give at least one label -> run folder")
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    tables = {label: _read_run(label, folder) for label, folder in runs.items()}
    colours = _with_defaults(colours, list(tables))
    changes = {label: _placement_changes(t["decisions"]) for label, t in tables.items()}

    fig = Figure(figsize=(13, 6.4 + 0.3 * len(tables)), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[3.2, 0.35 * len(tables) + 0.3, 1.5])
    ax_lat, ax_chg, ax_rep = axes
    for ax, name in zip(axes, ("latency", "changes", "replicas"), strict=True):
        ax.set_label(name)  # so that callers and tests can find the panels by name
    _draw_latency(ax_lat, tables, colours, changes, window_s)
    _draw_replicas(ax_rep, tables, colours)
    _draw_change_rows(ax_chg, changes, colours)
    for label, moments in changes.items():
        for ts, _ in moments:
            for ax in (ax_lat, ax_rep):
                ax.axvline(ts, color=colours[label], linestyle="--", linewidth=0.8, alpha=0.35,
                           zorder=1)
    oom_note = _mark_ooms(tuple(axes), {label: t["events"] for label, t in tables.items()})
    warmup = _warmup(runs)
    for ax in axes:
        if warmup:
            ax.axvspan(0, warmup, color="0.93", zorder=0)
        ax.grid(axis="x", alpha=0.3, linewidth=0.6)
    ax_lat.set_xlim(left=0)
    handles, _ = ax_lat.get_legend_handles_labels()
    if oom_note:
        handles.append(Line2D([], [], color=OOM_COLOUR, linestyle=":", label=oom_note))
    if warmup:
        handles.append(Patch(color="0.93", label=f"warm-up ({warmup:g} s)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3),
               fontsize=9, frameon=False)
    apps = sorted({str(a) for t in tables.values() for a in t["requests"]["app"].unique()})
    fig.suptitle(f"{', '.join(apps) or 'runs'}: latency, placement changes and replicas",
                 fontsize=12)
    _label_changes(fig, ax_chg, changes, colours)
    return _save(fig, path)


# ---------------------------------------------------------------------- summary input


def _check_summary(summary: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The summary with a float `mean`, and its grid columns (every column not of the
    summary's own), or ValueError naming what is missing."""
    if not isinstance(summary, pd.DataFrame):
        raise ValueError(f"summary must be a pandas DataFrame, got {type(summary).__name__}")
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks column(s) {', '.join(missing)} "
                         f"(expected {', '.join(SUMMARY_COLUMNS)} plus grid columns)")
    present = _ordered(summary["metric"])
    unknown = [m for m in metrics if m not in present]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}: the summary has "
                         f"{', '.join(present) or 'no metric'}")
    out = summary.copy()
    for column in ("mean", "ci95_low", "ci95_high"):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    return out, [c for c in summary.columns if c not in SUMMARY_COLUMNS]


def _ordered(values: pd.Series) -> list[str]:
    return [str(v) for v in dict.fromkeys(values.tolist())]


def _grid_points(rows: pd.DataFrame, grid: list[str]) -> list[GridPoint]:
    if not grid:
        return [()]
    points = rows[grid].drop_duplicates()
    return sorted((tuple(p) for p in points.itertuples(index=False)), key=_sort_key)


def _sort_key(point: GridPoint) -> tuple[tuple[int, float, str], ...]:
    def one(v: Any) -> tuple[int, float, str]:
        if isinstance(v, int | float | np.number) and not math.isnan(float(v)):
            return (0, float(v), "")
        return (2, 0.0, "") if pd.isna(v) else (1, 0.0, str(v))
    return tuple(one(v) for v in point)


def _select(rows: pd.DataFrame, grid: list[str], point: GridPoint) -> pd.DataFrame:
    mask = pd.Series(True, index=rows.index)
    for column, value in zip(grid, point, strict=True):
        mask &= rows[column].isna() if pd.isna(value) else rows[column] == value
    return rows[mask]


def _x_keys(rows: pd.DataFrame) -> list[tuple[str, str]]:
    return [(str(s), str(a)) for s, a in dict.fromkeys(zip(rows["scenario"], rows["app"],
                                                           strict=True))]


def _along(frame: pd.DataFrame, keys: list[tuple[str, str]], column: str) -> np.ndarray:
    """`column` of `frame` at every (scenario, app) of `keys`, NaN where it has no row."""
    by_key = frame.set_index([frame["scenario"].astype(str), frame["app"].astype(str)])[column]
    by_key = by_key[~by_key.index.duplicated(keep="last")]
    return by_key.reindex(pd.MultiIndex.from_tuples(keys)).to_numpy(dtype=float)


def _has(frame: pd.DataFrame, keys: list[tuple[str, str]]) -> np.ndarray:
    """Whether `frame` has a row for each (scenario, app) of `keys`."""
    found = set(zip(frame["scenario"].astype(str), frame["app"].astype(str), strict=True))
    return np.array([key in found for key in keys], dtype=bool)


def _speedups(panel: pd.DataFrame, metric: str, baseline: str, keys: list[tuple[str, str]],
              policies: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Speed-ups, (scenario, app) x policy, and whether both the policy and the baseline ran
    there. A speed-up is NaN where they ran but either has no finite, non-zero value."""
    base_rows = panel[panel["policy"] == baseline]
    base = _along(base_rows, keys, "mean")
    values, present = [], []
    for policy in policies:
        rows = panel[panel["policy"] == policy]
        mean = _along(rows, keys, "mean")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = mean / base if metric in HIGHER_IS_BETTER else base / mean
        values.append(np.where(np.isfinite(ratio), ratio, np.nan))
        present.append(_has(rows, keys) & _has(base_rows, keys))
    return np.column_stack(values), np.column_stack(present)


def _finite_max(values: pd.Series | np.ndarray, default: float) -> float:
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    return float(array.max()) if array.size and array.max() > 0 else default


# ---------------------------------------------------------------------- bars


def _panels(nrows: int, ncols: int, groups: int,
            policies: int) -> tuple[Figure, list[list[Axes]]]:
    """Panels sharing their y axis along a row (one metric), sized for the bars they hold."""
    width = min(max(3.2, 0.7 + groups * (0.22 * policies + 0.35)), 9.0)
    fig = Figure(figsize=(min(width * ncols + 1.2, 24.0), 2.9 * nrows + 1.6),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey="row", squeeze=False)
    return fig, [list(row) for row in axes]


def _bars(ax: Axes, values: np.ndarray, present: np.ndarray, slot: int, slots: int,
          colour: str, label: str, top: float, yerr: np.ndarray | None = None) -> bool:
    """One policy's bars (one bar container) at its slot of every group: a hatched "no data"
    marker where it ran (`present`) but the value is NaN, nothing where it did not run (an
    experiment's `only`). True if there was a marker."""
    width = 0.8 / slots
    x = np.arange(len(values)) + (slot - (slots - 1) / 2) * width
    heights = np.where(np.isnan(values), 0.0, values)
    kwargs: dict[str, Any] = {}
    if yerr is not None:
        kwargs = {"yerr": np.where(np.isnan(values), 0.0, yerr), "capsize": 2,
                  "error_kw": {"elinewidth": 0.8, "ecolor": "0.25", "capthick": 0.8}}
    ax.bar(x, heights, width, color=colour, label=label, zorder=2, **kwargs)
    missing = np.flatnonzero(np.isnan(values) & present)
    for i in missing:
        _no_data(ax, float(x[i]), width, colour, top)
    for i in np.flatnonzero(values == 0):  # a bar of height 0 would not show at all
        ax.text(float(x[i]), 0, "0", ha="center", va="bottom", fontsize=7, color=colour)
    ax.grid(axis="y", alpha=0.3, linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    return bool(missing.size)


def _no_data(ax: Axes, x: float, width: float, colour: str, top: float) -> None:
    ax.add_patch(Rectangle((x - width / 2, 0), width, 0.4 * top, fill=False, hatch="////",
                           edgecolor=colour, linewidth=0.8, zorder=2))
    ax.text(x, 0.2 * top, NO_DATA, rotation=90, ha="center", va="center", fontsize=6.5,
            color="0.15", zorder=3,
            bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none",
                  "alpha": 0.85})


def _x_axis(ax: Axes, keys: list[tuple[str, str]], *, scenarios: bool,
            labels: bool = True) -> None:
    """App names under the groups, with their scenario when the figure has several."""
    names = [f"{a}\n({s})" if scenarios else a for s, a in keys]
    ax.set_xlim(-0.6, len(keys) - 0.4)
    if not labels:
        ax.set_xticks(range(len(keys)), [""] * len(keys))
        return
    long = len(keys) > 3 or max((len(n) for n in names), default=0) > 14
    ax.set_xticks(range(len(keys)), names, rotation=30 if long else 0,
                  ha="right" if long else "center", rotation_mode="anchor", fontsize=8.5)


def _legend(fig: Figure, policies: list[str], colours: dict[str, str], *, no_data: bool,
            extra: Sequence[Any] = ()) -> None:
    handles: list[Any] = [Patch(color=colours[p], label=p) for p in policies]
    handles.extend(extra)
    if no_data:
        handles.append(Patch(fill=False, hatch="////", edgecolor="0.3", label=NO_DATA))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7),
               fontsize=9, frameon=False)


def _point_title(grid: list[str], point: GridPoint) -> str:
    return ", ".join(f"{c} = {_fmt(v)}" for c, v in zip(grid, point, strict=True))


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:.0f}"
    return "—" if pd.isna(value) else str(value)


def _seeds_note(rows: pd.DataFrame, ci: bool = True) -> str:
    counts = pd.to_numeric(rows["n"], errors="coerce").dropna().unique()
    if len(counts) == 1 and int(counts[0]) <= 1:
        return f" ({int(counts[0])} seed{'' if int(counts[0]) == 1 else 's'})"
    seeds = f"{int(counts[0])} seeds" if len(counts) == 1 else "seeds"
    return f" (mean of {seeds}, 95 % CI)" if ci else f" (means of {seeds})"


def _with_defaults(given: Mapping[str, str] | None, labels: list[str]) -> dict[str, str]:
    """`given` colours, and palette colours (in order, skipping those taken) for the rest."""
    out = {k: v for k, v in (given or {}).items() if k in labels}
    free = itertools.cycle([c for c in PALETTE if c not in out.values()] or PALETTE)
    return {label: out[label] if label in out else next(free) for label in labels}


def _metric_label(metric: str, unit: bool = True) -> str:
    if metric.endswith("_latency"):
        head = metric.removesuffix("_latency")
        name = "average latency" if head == "average" else f"{head} percentile latency"
        suffix = "ms"
    elif metric in _UNITS:
        name, suffix = _UNITS[metric]
    else:
        name, suffix = metric.replace("_", " "), "count" if metric in _COUNTS else ""
    return f"{name} ({suffix})" if unit and suffix else name


# ---------------------------------------------------------------------- runs over time


def _read_run(label: str, folder: str | Path) -> dict[str, pd.DataFrame]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"run {label!r}: {folder} is not a folder")
    missing = [f"{t}.parquet" for t in RUN_TABLES if not (folder / f"{t}.parquet").is_file()]
    if missing:
        raise ValueError(f"run {label!r}: {folder} lacks {', '.join(missing)}")
    return {t: pd.read_parquet(folder / f"{t}.parquet") for t in RUN_TABLES}


def _windowed_latency(requests: pd.DataFrame, window_s: float) -> pd.Series:
    """Mean latency (ms) of the successful walkers arriving in each window, at the window's
    middle; NaN for windows without one, so that gaps show as gaps."""
    ok = requests[requests["ok"].astype(bool)]
    if ok.empty:
        return pd.Series(dtype=float)
    bins = (ok["ts"].astype(float) // window_s).astype(int)
    means = ok["latency_ms"].astype(float).groupby(bins).mean()
    every = range(0, int(requests["ts"].astype(float).max() // window_s) + 1)
    means = means.reindex(every)
    means.index = (means.index.to_numpy(dtype=float) + 0.5) * window_s
    return means


def _ready_replicas(timeline: pd.DataFrame) -> pd.Series:
    if timeline.empty:
        return pd.Series(dtype=float)
    return timeline.groupby(timeline["ts"].astype(float))["replicas_ready"].sum()


def _placement_changes(decisions: pd.DataFrame) -> list[tuple[float, str]]:
    """(ts, "action, action → placement; ...") per moment the placement changed (the scenario's
    initial placement left out); an action changed twice at one moment shows its last."""
    placement = decisions["placement"].fillna("").astype(str)
    changes = decisions[(placement != "") & (decisions["source"].astype(str) != "scenario")]
    out = []
    for ts, group in changes.groupby(changes["ts"].astype(float), sort=True):
        last = dict(zip(group["action"].astype(str), group["placement"].astype(str),
                        strict=True))
        by_place: dict[str, list[str]] = {}
        for action, where in last.items():
            by_place.setdefault(where, []).append(action)
        out.append((float(ts), "; ".join(f"{', '.join(a)} → {p}" for p, a in by_place.items())))
    return out


def _draw_latency(ax: Axes, tables: dict[str, dict[str, pd.DataFrame]],
                  colours: dict[str, str], changes: dict[str, list[tuple[float, str]]],
                  window_s: float) -> None:
    """One line per run, log scale when the values span more than a factor of 20."""
    latencies = {label: _windowed_latency(t["requests"], window_s)
                 for label, t in tables.items()}
    for label, series in latencies.items():
        notes = [] if series.notna().any() else ["no walker succeeded"]
        count = len(changes[label])
        notes.append(f"{count} placement change{'s' if count != 1 else ''}")
        ax.plot(series.index, series.to_numpy(), color=colours[label], linewidth=1.4,
                marker="o", markersize=2.2, label=f"{label} ({', '.join(notes)})", zorder=3)
    values = pd.concat([s for s in latencies.values() if len(s)] or [pd.Series(dtype=float)])
    values = values[values > 0]
    log = bool(len(values)) and values.max() / values.min() > 20
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(f"walker latency, {window_s:g} s mean\n(ms{', log scale' if log else ''})")
    ax.grid(axis="y", alpha=0.3, linewidth=0.6, which="major")


def _draw_replicas(ax: Axes, tables: dict[str, dict[str, pd.DataFrame]],
                   colours: dict[str, str]) -> None:
    for label, t in tables.items():
        replicas = _ready_replicas(t["timeline"])
        ax.step(replicas.index, replicas.to_numpy(), where="post", color=colours[label],
                linewidth=1.4, label=label, zorder=3)
    ax.set_ylabel("ready replicas\n(all actions)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3, linewidth=0.6)
    ax.set_xlabel("simulated time (s)")


def _draw_change_rows(ax: Axes, changes: dict[str, list[tuple[float, str]]],
                      colours: dict[str, str]) -> None:
    """A row per run with a marker at every moment its placement changed."""
    labels = list(changes)
    for row, label in enumerate(labels):
        ax.axhline(-row, color="0.85", linewidth=0.8, zorder=1)
        ts = [t for t, _ in changes[label]]
        ax.plot(ts, [-row] * len(ts), linestyle="none", marker="|", markersize=11,
                markeredgewidth=2, color=colours[label], zorder=3)
    ax.set_yticks([-row for row in range(len(labels))], labels, fontsize=8)
    for tick, label in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_color(colours[label])
    ax.set_ylim(-len(labels) + 0.5, 0.5)
    ax.tick_params(axis="y", length=0)
    ax.set_ylabel("placement\nchanges", fontsize=9)


def _label_changes(fig: Figure, ax: Axes, changes: dict[str, list[tuple[float, str]]],
                   colours: dict[str, str]) -> None:
    """Name the actions beside each change marker, skipping a name that would overprint the
    previous one of its row (measured after the layout, so this runs last)."""
    fig.draw_without_rendering()
    right = ax.get_window_extent().x1
    for row, (label, moments) in enumerate(changes.items()):
        edge = -math.inf
        for ts, text in moments:
            # Below the markers (zorder 3), on a veil so that a marker it crosses stays seen.
            note = ax.annotate(text, (ts, -row), xytext=(6, 0), textcoords="offset points",
                               va="center", fontsize=7, color=colours[label], zorder=2,
                               annotation_clip=False,
                               bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                                     "edgecolor": "none", "alpha": 0.75})
            note.set_in_layout(False)
            box = note.get_window_extent()
            if box.x1 > right:  # past the panel's end: put it on the marker's left instead
                note.set_horizontalalignment("right")
                note.xyann = (-6, 0)
                box = note.get_window_extent()
            if box.x0 < edge + 6:
                note.remove()
            else:
                edge = box.x1


def _mark_ooms(axes: tuple[Axes, ...], events: dict[str, pd.DataFrame]) -> str:
    """Red dotted lines at every out-of-memory event; the legend text (counts per run)."""
    counts = {}
    for label, frame in events.items():
        ts = frame.loc[frame["kind"] == "out_of_memory", "ts"].astype(float).to_numpy()
        for t in ts.tolist():
            for ax in axes:
                ax.axvline(t, color=OOM_COLOUR, linestyle=":", linewidth=1.1, alpha=0.65,
                           zorder=1)
        if ts.size:
            counts[label] = ts.size
    if not counts:
        return ""
    return "out of memory (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")"


def _warmup(runs: Mapping[str, str | Path]) -> float:
    """The warm-up of the runs when every folder has its scenario.toml and they agree."""
    found = set()
    for folder in runs.values():
        path = Path(folder) / "scenario.toml"
        if not path.is_file():
            return 0.0
        found.add(float(tomllib.loads(path.read_text()).get("warmup_s", 0.0)))
    return found.pop() if len(found) == 1 else 0.0


# ---------------------------------------------------------------------- saving


def _format(path: str | Path) -> str:
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"plot path {str(path)!r} must end in .png or .svg")
    return fmt


def _save(fig: Figure, path: str | Path) -> Figure:
    fmt = _format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 would make the plot unreadable to others; a unique name will do.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fig.savefig(tmp, format=fmt, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return fig
