"""Latency against cost (`cost_plot`): what each policy's latency costs in replica
core-seconds and in node memory, and which policies no other beats on both.

One block per scenario, app and grid point, with a panel per cost: a point per policy at its
mean cost (x) and mean latency (y) over seeds, with 95 % CIs both ways, labelled with its
name; the Pareto front (the policies no other has both lower latency and lower cost than) as a
step line through ringed points. An experiment draws it as `cost.png` (`plots = ["cost"]`,
and by default when it has two policies or more).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation

from jsorc_sim.plot_common import (
    MISSING_COLUMN,
    Panel,
    check_format,
    check_summary,
    legend_width_in,
    log_axis,
    metric_label,
    ordered,
    panel_title,
    panels_of,
    place_legend,
    save,
    seeds_note,
    select,
    suptitle,
    with_defaults,
    wrap,
)

COSTS = ("replica_core_s", "node_memory_gb_s")
FRONT_GID = "pareto-front"  # the gid of the front's step line, so that tests can find it
_BLOCK_W, _BLOCK_H = 4.1, 3.4  # inches per panel and per row of blocks


def pareto_front(cost: Sequence[float] | np.ndarray,
                 latency: Sequence[float] | np.ndarray) -> list[int]:
    """Indices of the points that no other point dominates (another with cost and latency
    both <= and one of them <), in order of rising cost; a point with a NaN is never on it,
    and equal points are on it together. Pure."""
    c = np.asarray(cost, dtype=float)
    lat = np.asarray(latency, dtype=float)
    if c.shape != lat.shape:
        raise ValueError(f"cost and latency differ in length: {c.shape} and {lat.shape}")
    ok = np.flatnonzero(np.isfinite(c) & np.isfinite(lat))
    front: list[int] = []
    best = math.inf
    for i in ok[np.lexsort((lat[ok], c[ok]))]:  # by cost, then latency
        same_as_last = bool(front) and c[i] == c[front[-1]] and lat[i] == lat[front[-1]]
        if lat[i] < best or same_as_last:
            front.append(int(i))
            best = min(best, float(lat[i]))
    return front


def cost_plot(summary: pd.DataFrame, path: str | Path, *, latency: str = "average_latency",
              costs: Sequence[str] = COSTS,
              colours: Mapping[str, str] | None = None) -> Figure:
    """`latency`'s mean (y) against each of `costs` (x, one panel each) per policy, for every
    scenario, app and grid point of the summary, with the Pareto front; see the module."""
    check_format(path)
    if isinstance(costs, str) or not costs:
        raise ValueError(f"costs must be a non-empty sequence of metric names, got {costs!r}")
    summary, grid = check_summary(summary, [latency, *costs])
    rows = summary[summary["metric"].isin([latency, *costs])]
    policies = ordered(rows["policy"])
    colours = with_defaults(colours, ordered(summary["policy"]))
    blocks = [(panel, app) for panel in panels_of(rows, grid)
              for app in ordered(select(rows, grid, panel)["app"])]
    across = 1 if len(blocks) <= 3 else 2  # a column while it fits, the panels stay wide
    down = math.ceil(len(blocks) / across)
    legend = legend_width_in([*policies, "Pareto front"])
    fig = Figure(figsize=(across * len(costs) * _BLOCK_W + legend, down * _BLOCK_H + 1.3),
                 layout="constrained")
    subfigs = np.asarray(fig.subfigures(down, across, squeeze=False), dtype=object).ravel()
    scenarios = len({panel[0] for panel, _ in blocks}) > 1
    for sub, (panel, app) in zip(subfigs, blocks, strict=False):
        frame = select(rows, grid, panel)
        _block(sub, frame[frame["app"].astype(str) == app], latency, costs, colours,
               _block_title(grid, panel, app, scenarios))
    for sub in subfigs[len(blocks):]:
        sub.set_visible(False)
    suptitle(fig, f"{metric_label(latency, unit=False)} against cost"
                  f"{seeds_note(rows[rows['metric'] == latency])}; step line: the Pareto "
                  "front (no other policy has both lower latency and lower cost)",
             legend_in=legend)
    handles: list[Any] = [Line2D([], [], color=colours[p], marker="o", linestyle="none",
                                 label=p) for p in policies]
    handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none",
                          label="Pareto front"))
    place_legend(fig, handles)
    _unstack_labels(fig)
    return save(fig, path)


def _unstack_labels(fig: Figure) -> None:
    """Move a point's name down, a line at a time, while it overprints a name placed before
    it in its panel (measured after the layout)."""
    fig.draw_without_rendering()
    for ax in fig.axes:
        placed: list[Any] = []
        for note in [t for t in ax.texts if isinstance(t, Annotation)]:
            for _ in range(6):
                box = note.get_window_extent()
                if not any(box.overlaps(other) for other in placed):
                    break
                dx, dy = note.xyann
                note.xyann = (dx, dy - 8)
            placed.append(note.get_window_extent())


def _block_title(grid: list[str], panel: Panel, app: str, scenarios: bool) -> str:
    head = panel_title(grid, panel, scenarios=True) if scenarios or grid else panel[0]
    return head if app == "all" else f"{head}: {app}"


def _block(sub: SubFigure, frame: pd.DataFrame, latency: str, costs: Sequence[str],
           colours: dict[str, str], title: str) -> None:
    axes = sub.subplots(1, len(costs), sharey=True, squeeze=False)[0]
    policies = ordered(frame["policy"])
    y, y_low, y_high, reasons = _column(frame, latency, policies)
    for k, (ax, cost) in enumerate(zip(axes, costs, strict=True)):
        x, x_low, x_high, _ = _column(frame, cost, policies)
        _points(ax, policies, colours, x, x_low, x_high, y, y_low, y_high)
        front = pareto_front(x, y)
        ax.step(x[front], y[front], where="post", color="0.3", linewidth=1.2, zorder=2,
                gid=FRONT_GID)
        ax.scatter(x[front], y[front], s=110, facecolors="none", edgecolors="0.3",
                   linewidths=1.0, zorder=4)
        x_note = log_axis(ax, "x", x)  # by the means: a CI reaching 0 is no reason
        ax.set_xlabel(metric_label(cost) + (f", {x_note}" if x_note else ""), fontsize=9)
        if k == 0:
            y_note = log_axis(ax, "y", y)
            ax.set_ylabel(metric_label(latency) + (f", {y_note}" if y_note else ""),
                          fontsize=9)
        ax.grid(alpha=0.3, linewidth=0.6, which="major")
        ax.margins(0.12)
        missing = [f"{p}: {r}" for p, r, v, c in zip(policies, reasons, y, x, strict=True)
                   if not (np.isfinite(v) and np.isfinite(c))]
        if missing:
            ax.text(0.02, 0.02, wrap("not shown: " + "; ".join(missing), _BLOCK_W - 0.6, 7),
                    transform=ax.transAxes, fontsize=7, color="0.25", va="bottom",
                    ha="left", bbox={"facecolor": "white", "edgecolor": "none",
                                     "alpha": 0.8})
    sub.suptitle(wrap(title, len(costs) * _BLOCK_W - 0.4, 10.5), fontsize=10.5)


def _column(frame: pd.DataFrame, metric: str,
            policies: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Mean, CI low, CI high (the mean where there is no CI) and missing reason of `metric`
    per policy."""
    rows = frame[frame["metric"] == metric].drop_duplicates("policy", keep="last")
    rows = rows.set_index(rows["policy"].astype(str)).reindex(policies)
    mean = rows["mean"].to_numpy(dtype=float)
    low = rows["ci95_low"].to_numpy(dtype=float)
    high = rows["ci95_high"].to_numpy(dtype=float)
    reasons = [str(r) if isinstance(r, str) and r else "no data"
               for r in rows[MISSING_COLUMN].tolist()]
    return mean, np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high,
                                                                 mean), reasons


def _points(ax: Axes, policies: list[str], colours: dict[str, str], x: np.ndarray,
            x_low: np.ndarray, x_high: np.ndarray, y: np.ndarray, y_low: np.ndarray,
            y_high: np.ndarray) -> None:
    """A point per policy with its CIs both ways, and its name beside it (one label for
    policies at the same point, which would otherwise print over each other)."""
    at: dict[tuple[float, float], list[str]] = {}
    for i, policy in enumerate(policies):
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        ax.errorbar([x[i]], [y[i]], xerr=[[max(x[i] - x_low[i], 0.0)],
                                          [max(x_high[i] - x[i], 0.0)]],
                    yerr=[[max(y[i] - y_low[i], 0.0)], [max(y_high[i] - y[i], 0.0)]],
                    fmt="o", markersize=5,
                    color=colours[policy], ecolor=colours[policy], elinewidth=0.9,
                    capsize=2.5, zorder=3, label=policy)
        at.setdefault((float(f"{x[i]:.4g}"), float(f"{y[i]:.4g}")), []).append(policy)
    for (px, py), names in at.items():
        ax.annotate(", ".join(names), (px, py), xytext=(5, 4), textcoords="offset points",
                    fontsize=7, color=colours[names[0]], zorder=5)
