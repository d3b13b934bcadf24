"""Plots of experiments: a metric per app and policy, speed-ups against a baseline, latency
against cost (`cost_plot`, in plot_cost.py), and runs over time (`timeline_plot`, in
plot_timeline.py).

Every function takes pandas DataFrames (or run folders) in the shapes of docs/experiments.md
and `Result.save`, draws on its own `matplotlib.figure.Figure` (no pyplot, so no global state
and no display needed), saves it to `path` (PNG or SVG by suffix, written to a temporary name
and renamed, like every file of an experiment) and returns the Figure. Colours follow the
order of first appearance of a policy (or run label), so a policy keeps its colour across the
panels of a figure; red is kept for out-of-memory marks.

What the figures promise (tests/jsorc_sim/test_plots_truth.py checks each):
- Nothing is clipped: constrained layout, titles wrapped to the figure's width, the legend
  below the panels for up to four entries and in a column on their right for more.
- Scales: one panel per scenario (and grid point); panels share their y axis only when their
  magnitudes are within 10x of each other, and a panel whose values span more than 10x gets a
  log axis (speed-up bars then start at 1, so that their length is the log of the speed-up).
- A cell with no value (OOM, a policy error, a failed run, requests unfinished) is an empty
  slot with a label saying why, never a bar.
- Speed-ups carry their 95 % CI when given the experiment's paired differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from jsorc_sim.plot_common import (
    HIGHER_IS_BETTER,
    MISSING_COLUMN,
    NO_DATA,
    OOM_COLOUR,
    PALETTE,
    SPAN_MAX,
    SUMMARY_COLUMNS,
    Panel,
    along,
    check_format,
    check_summary,
    finite_max,
    has,
    legend_width_in,
    metric_label,
    needs_log,
    ordered,
    panel_title,
    panels_of,
    place_legend,
    policy_colours,
    save,
    seeds_note,
    select,
    spread,
    suptitle,
    with_defaults,
    wrap,
    x_keys,
)
from jsorc_sim.plot_cost import cost_plot, pareto_front
from jsorc_sim.plot_timeline import CHANGE_LANE_LIMIT, RUN_TABLES, timeline_plot

__all__ = ["CHANGE_LANE_LIMIT", "HIGHER_IS_BETTER", "MISSING_COLUMN", "NO_DATA", "OOM_COLOUR",
           "PALETTE", "RUN_TABLES", "SUMMARY_COLUMNS", "cost_plot", "pareto_front",
           "policy_colours", "speedup_plot", "summary_plot", "timeline_plot"]

MISSING_GID = "missing"  # the gid of a missing cell's label, so that tests can find them


def summary_plot(summary: pd.DataFrame, metric: str, path: str | Path, *,
                 colours: Mapping[str, str] | None = None) -> Figure:
    """Grouped bars of `metric`'s mean per app (x) and policy (colour), with 95 % CI error
    bars; one panel per scenario and grid point. A cell without a value (no walker
    succeeded) is a labelled gap saying why. `colours` (policy -> colour, e.g. from
    `policy_colours`) keeps colours across figures."""
    check_format(path)
    summary, grid = check_summary(summary, [metric])
    rows = summary[summary["metric"] == metric]
    policies = ordered(rows["policy"])
    colours = with_defaults(colours, ordered(summary["policy"]))
    panels = panels_of(rows, grid)
    frames = [select(rows, grid, panel) for panel in panels]
    values = [frame[["mean", "ci95_low", "ci95_high"]].to_numpy(dtype=float).ravel()
              for frame in frames]
    tops = [finite_max(v, 1.0) for v in values]
    shared = spread(tops) <= SPAN_MAX

    fig, axes = _panels(1, len(panels), max(len(x_keys(f)) for f in frames), policies,
                        shared=shared)
    for c, (ax, panel, frame) in enumerate(zip(axes[0], panels, frames, strict=True)):
        keys = x_keys(frame)
        for slot, policy in enumerate(policies):
            mine = frame[frame["policy"] == policy]
            if mine.empty:
                continue
            means = along(mine, keys, "mean")
            err = np.vstack([means - along(mine, keys, "ci95_low"),
                             along(mine, keys, "ci95_high") - means])
            _bars(ax, means, has(mine, keys), along(mine, keys, MISSING_COLUMN, object),
                  slot, len(policies), colours[policy], policy,
                  yerr=np.where(np.isfinite(err), np.maximum(err, 0.0), 0.0))
        scale = np.concatenate(values) if shared else values[c]
        log = _y_range(ax, scale, floor=None)
        _x_axis(ax, keys)
        _title(fig, ax, panel_title(grid, panel, scenarios=len({p[0] for p in panels}) > 1),
               len(panels))
        if c == 0 or not shared:
            ax.set_ylabel(metric_label(metric) + (" — log scale" if log else ""), fontsize=9)
    suptitle(fig, f"{metric_label(metric, unit=False)} by app and policy{seeds_note(rows)}",
             legend_in=legend_width_in(policies))
    place_legend(fig, [Patch(color=colours[p], label=p) for p in policies])
    return save(fig, path)


def speedup_plot(summary: pd.DataFrame, baseline: str, path: str | Path,
                 metrics: Sequence[str] = ("average_latency", "throughput", "99th_latency"),
                 *, colours: Mapping[str, str] | None = None,
                 paired: pd.DataFrame | None = None) -> Figure:
    """Speed-up of every policy against `baseline` per app (> 1 is better for every metric:
    baseline / policy for latencies and costs, policy / baseline for throughput); one row of
    panels per metric, one column per scenario and grid point, a line at 1.0, the baseline
    left out. With `paired` (the experiment's paired.csv: per-seed differences from
    `baseline`), each bar has the 95 % CI of its speed-up: the CI of the mean paired
    difference d carried through the ratio, base / (base + d) (or (base + d) / base for
    throughput), the baseline's mean held fixed."""
    check_format(path)
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics must be a non-empty sequence of metric names, got {metrics!r}")
    summary, grid = check_summary(summary, list(metrics))
    known = ordered(summary["policy"])
    if baseline not in known:
        raise ValueError(f"baseline {baseline!r} is not a policy of the summary "
                         f"(policies: {', '.join(known)})")
    policies = [p for p in known if p != baseline]
    if not policies:
        raise ValueError(f"the summary holds only the baseline {baseline!r}: nothing to compare")
    if paired is not None:
        _check_paired(paired, grid)
    colours = with_defaults(colours, known)
    rows = summary[summary["metric"].isin(list(metrics))]
    panels = panels_of(rows, grid)
    frames = [select(rows, grid, panel) for panel in panels]
    keys = [x_keys(frame) for frame in frames]  # a column's apps, the same for each metric
    ratios = {m: [_speedups(frame[frame["metric"] == m], m, baseline, k, policies, paired,
                            grid, panel)
                  for frame, k, panel in zip(frames, keys, panels, strict=True)]
              for m in metrics}
    shared = {m: spread([finite_max(r.high_or_value(), 1.0) for r in ratios[m]]) <= SPAN_MAX
              for m in metrics}

    fig, axes = _panels(len(metrics), len(panels), max(map(len, keys)), policies,
                        shared=all(shared.values()), extra=[f"{baseline} (= 1)"])
    for r, metric in enumerate(metrics):
        row_values = np.concatenate([x.all_values() for x in ratios[metric]])
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            found = ratios[metric][c]
            scale = row_values if shared[metric] else found.all_values()
            log = needs_log(np.append(scale, 1.0))
            for slot, policy in enumerate(policies):
                if not found.present[:, slot].any():  # not run here (or no baseline)
                    continue
                _bars(ax, found.values[:, slot], found.present[:, slot],
                      found.reasons[:, slot], slot, len(policies), colours[policy], policy,
                      yerr=found.yerr(slot), bottom=1.0 if log else 0.0)
            if not found.present.any():
                ax.text(0.5, 0.5, f"{baseline} was not run here", transform=ax.transAxes,
                        ha="center", va="center", fontsize=9, color="0.3")
            ax.axhline(1.0, color="0.25", linewidth=1.0, linestyle="--", zorder=1,
                       label=f"{baseline} (= 1)")
            _y_range(ax, scale, floor=1.0)
            _x_axis(ax, keys[c], labels=r == len(metrics) - 1)
            if r == 0:
                _title(fig, ax, panel_title(grid, panel,
                                            scenarios=len({p[0] for p in panels}) > 1),
                       len(panels))
            if c == 0 or not shared[metric]:
                direction = "policy / baseline" if metric in HIGHER_IS_BETTER \
                    else "baseline / policy"
                ax.set_ylabel(f"{metric_label(metric, unit=False)}\nspeed-up ({direction})"
                              + ("\nlog scale" if log else ""), fontsize=9)
    ci = ", 95 % CI of the paired differences" if paired is not None else ""
    suptitle(fig, f"Speed-up against {baseline} (> 1 is better)"
                  f"{seeds_note(rows, ci=False)}{ci}",
             legend_in=legend_width_in([*policies, f"{baseline} (= 1)"]))
    handles: list[Any] = [Patch(color=colours[p], label=p) for p in policies]
    handles.append(Line2D([], [], color="0.25", linestyle="--", label=f"{baseline} (= 1)"))
    place_legend(fig, handles)
    return save(fig, path)


# ---------------------------------------------------------------------- speed-ups


class _Speedups:
    """Speed-ups of one panel and metric, (scenario, app) x policy: the value, whether the
    policy and the baseline both ran there, why a value is missing, and the CI bounds."""

    def __init__(self, values: np.ndarray, present: np.ndarray, reasons: np.ndarray,
                 low: np.ndarray, high: np.ndarray) -> None:
        self.values, self.present, self.reasons = values, present, reasons
        self.low, self.high = low, high

    def all_values(self) -> np.ndarray:
        return np.concatenate([self.values.ravel(), self.low.ravel(), self.high.ravel()])

    def high_or_value(self) -> np.ndarray:
        return np.where(np.isfinite(self.high), self.high, self.values).ravel()

    def yerr(self, slot: int) -> np.ndarray | None:
        low, high, value = self.low[:, slot], self.high[:, slot], self.values[:, slot]
        if not np.isfinite(low).any():
            return None
        # An unbounded upper end goes far past any axis' top (the axes clip it).
        high = np.where(np.isposinf(high), 1e9 * np.fmax(np.abs(value), 1.0), high)
        err = np.vstack([value - low, high - value])
        return np.where(np.isfinite(err), np.maximum(err, 0.0), 0.0)


def _speedups(frame: pd.DataFrame, metric: str, baseline: str, keys: list[tuple[str, str]],
              policies: list[str], paired: pd.DataFrame | None, grid: list[str],
              panel: Panel) -> _Speedups:
    """A speed-up is NaN where both ran but either has no finite, non-zero value; its reason
    is the policy's own when it has no value, else the baseline's."""
    base_rows = frame[frame["policy"] == baseline]
    base = along(base_rows, keys, "mean")
    base_reason = along(base_rows, keys, MISSING_COLUMN, object)
    if paired is not None:
        pairs = select(paired[(paired["metric"] == metric) & (paired["baseline"] == baseline)],
                       grid, panel)
    columns: list[list[np.ndarray]] = [[], [], [], [], []]
    for policy in policies:
        rows = frame[frame["policy"] == policy]
        mean = along(rows, keys, "mean")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = _ratio(metric, base, mean)
        low = high = np.full(len(keys), np.nan)
        if paired is not None:
            mine = pairs[pairs["policy"] == policy]
            low, high = _ratio_ci(metric, base, along(mine, keys, "ci95_low"),
                                  along(mine, keys, "ci95_high"))
        theirs = np.array([f"{baseline}: {r}" for r in base_reason], dtype=object)
        reason = np.where(np.isfinite(mean), theirs, along(rows, keys, MISSING_COLUMN, object))
        for column, value in zip(columns, (ratio, _has_both(rows, base_rows, keys), reason,
                                           low, high), strict=True):
            column.append(value)
    values, present, reasons, lows, highs = (np.column_stack(c) for c in columns)
    return _Speedups(values, present.astype(bool), reasons, lows, highs)


def _ratio(metric: str, base: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """The speed-up, NaN where it is not a finite number >= 0 (a CI bound whose denominator
    crossed zero has no meaning; a throughput of 0 is a speed-up of 0)."""
    ratio = mine / base if metric in HIGHER_IS_BETTER else base / mine
    return np.where(np.isfinite(ratio) & (ratio >= 0), ratio, np.nan)


def _ratio_ci(metric: str, base: np.ndarray, d_low: np.ndarray,
              d_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The speed-up's CI from the CI (d_low, d_high) of the mean paired difference. A latency
    whose CI reaches 0 or below has no upper bound to its speed-up: inf, drawn to the top of
    the axis (past it, clipped), never left out as if it were tight."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric in HIGHER_IS_BETTER:
            low = np.maximum((base + d_low) / base, 0.0)
            high = (base + d_high) / base
        else:
            low = np.where(base + d_high > 0, base / (base + d_high), np.nan)
            high = np.where(base + d_low > 0, base / (base + d_low), np.inf)
    bad = ~np.isfinite(base) | (base <= 0) | ~np.isfinite(d_low) | ~np.isfinite(d_high)
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def _has_both(rows: pd.DataFrame, base_rows: pd.DataFrame,
              keys: list[tuple[str, str]]) -> np.ndarray:
    both: np.ndarray = has(rows, keys) & has(base_rows, keys)
    return both


def _check_paired(paired: pd.DataFrame, grid: list[str]) -> None:
    need = ["scenario", "app", *grid, "policy", "baseline", "metric", "ci95_low", "ci95_high"]
    lacking = [c for c in need if c not in paired.columns]
    if lacking:
        raise ValueError(f"paired lacks column(s) {', '.join(lacking)} (it should be the "
                         "experiment's paired.csv, with the summary's grid columns)")


# ---------------------------------------------------------------------- bars


def _panels(nrows: int, ncols: int, groups: int, policies: list[str], *, shared: bool,
            extra: Sequence[str] = ()) -> tuple[Figure, list[list[Axes]]]:
    """Panels, sharing their y axis along a row (one metric) when `shared`, sized for the
    bars they hold plus the legend's column when it goes right of them."""
    width = min(max(3.2, 0.7 + groups * (0.22 * len(policies) + 0.35)), 9.0)
    legend = legend_width_in([*policies, *extra])
    fig = Figure(figsize=(min(width * ncols + 1.2, 24.0) + legend, 2.9 * nrows + 1.6),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey="row" if shared else False, squeeze=False)
    return fig, [list(row) for row in axes]


def _bars(ax: Axes, values: np.ndarray, present: np.ndarray, reasons: np.ndarray, slot: int,
          slots: int, colour: str, label: str, yerr: np.ndarray | None = None,
          bottom: float = 0.0) -> None:
    """One policy's bars (one bar container) at its slot of every group, only where it has a
    value: a labelled gap where it ran (`present`) without one, nothing where it did not run
    (an experiment's `only`)."""
    width = 0.8 / slots
    x = np.arange(len(values)) + (slot - (slots - 1) / 2) * width
    finite = np.isfinite(values)
    kwargs: dict[str, Any] = {}
    if yerr is not None:
        kwargs = {"yerr": yerr[:, finite], "capsize": 2,
                  "error_kw": {"elinewidth": 0.8, "ecolor": "0.25", "capthick": 0.8}}
    ax.bar(x[finite], values[finite] - bottom, width, bottom=bottom, color=colour,
           label=label, zorder=2, **kwargs)
    for i in np.flatnonzero(~finite & present):
        _gap(ax, float(x[i]), str(reasons[i] or "no data"), colour)
    for i in np.flatnonzero(values == 0):  # a bar of height 0 would not show at all
        ax.text(float(x[i]), 0.01, "0", ha="center", va="bottom", fontsize=7, color=colour,
                transform=ax.get_xaxis_transform())
    ax.grid(axis="y", alpha=0.3, linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)


def _gap(ax: Axes, x: float, reason: str, colour: str) -> None:
    """An empty slot: a small mark of the policy's colour on the axis and why, in words.
    Placed in axes coordinates, so it reads the same on a log axis and never looks like a
    value."""
    where = ax.get_xaxis_transform()
    ax.plot([x], [0.0], marker="x", markersize=4, color=colour, transform=where,
            clip_on=False, zorder=4, gid=MISSING_GID)
    ax.text(x, 0.03, reason, rotation=90, ha="center", va="bottom", fontsize=6.5,
            color="0.2", transform=where, zorder=3, gid=MISSING_GID)


def _y_range(ax: Axes, values: np.ndarray, floor: float | None) -> bool:
    """Linear from 0, or log when the values (with `floor`, the speed-up's 1) span more than
    SPAN_MAX. True if log."""
    values = np.asarray(values, dtype=float)
    if floor is not None:
        values = np.append(values, floor)
    positive = values[np.isfinite(values) & (values > 0)]
    if needs_log(positive):
        ax.set_yscale("log")
        ax.set_ylim(positive.min() / 1.8, positive.max() * 1.8)
        return True
    ax.set_ylim(0, finite_max(values, 1.0) * 1.15)
    return False


def _x_axis(ax: Axes, keys: list[tuple[str, str]], *, labels: bool = True) -> None:
    """App names under the groups (a panel holds one scenario: its title names it)."""
    names = [a for _, a in keys]
    ax.set_xlim(-0.6, len(keys) - 0.4)
    if not labels:
        ax.set_xticks(range(len(keys)), [""] * len(keys))
        return
    long = len(keys) > 3 or max((len(n) for n in names), default=0) > 14
    ax.set_xticks(range(len(keys)), names, rotation=30 if long else 0,
                  ha="right" if long else "center", rotation_mode="anchor", fontsize=8.5)


def _title(fig: Figure, ax: Axes, text: str, columns: int) -> None:
    panel_in = fig.get_figwidth() / max(columns, 1)
    ax.set_title(wrap(text, panel_in - 0.5, 10), fontsize=10)
