"""Plots of a tuning run, each drawn from a table that is written beside it as CSV.

`trajectory.png` (`trajectory.csv`): every candidate's train objective against its trial
number, one point per trial coloured by the phase that asked for it, and the best so far
as a step line; a failed candidate (+inf) is an x at the top edge, never a made-up value.
`default_vs_tuned.png` (`default_vs_tuned.csv`): for [train] and [test], the objective of
the policy's defaults and of the tuned parameters, per app (mean over the set's seeds) and
over all the set's cells (the set's objective), with 95 % Student-t intervals.

The frame builders are pure (they read a TuneResult); the plot functions draw on their own
`matplotlib.figure.Figure` (no pyplot: no global state, no display) with constrained
layout and the legend outside the axes, so nothing is clipped. matplotlib and scipy are
imported only here, and this module only when a tune writes its outputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from jsorc_sim.tune import Trial, TuneResult

TRAJECTORY_COLUMNS = ("trial", "phase", "searched", "objective", "failed", "best_so_far",
                      "params")
COMPARISON_COLUMNS = ("set", "app", "candidate", "trial", "cells", "failed_cells", "mean",
                      "ci95_low", "ci95_high")
ALL_CELLS = "all cells (objective)"
PHASE_COLOURS = {"default": "#7f7f7f", "random": "#1f77b4", "optimizer": "#ff7f0e"}
CANDIDATE_COLOURS = {"default": "#7f7f7f", "tuned": "#2ca02c"}
LOG_RATIO = 10.0  # a log axis when finite values differ by more than this factor


# ----------------------------------------------------------------------------- tables


def trajectory_frame(result: TuneResult) -> pd.DataFrame:
    """One row per candidate scored on [train], in trial order: its objective (+inf when a
    cell failed), whether the search asked for it (the defaults are scored for reference,
    and count only if the search drew them too) and the best searched objective so far."""
    searched = set(result.evaluator.searched)
    rows = []
    best = math.nan  # until the search's first candidate
    for trial in sorted(result.evaluator.trials.values(), key=lambda t: t.trial):
        if "train" not in trial.sets:
            continue
        value = trial.objective("train")
        if trial.trial in searched:
            best = value if math.isnan(best) else min(best, value)
        rows.append({"trial": trial.trial, "phase": trial.phase,
                     "searched": trial.trial in searched, "objective": value,
                     "failed": math.isinf(value), "best_so_far": best,
                     "params": _params(trial)})
    return pd.DataFrame(rows, columns=list(TRAJECTORY_COLUMNS))


def comparison_frame(result: TuneResult) -> pd.DataFrame:
    """Default against tuned on every set: per app (its cells are the set's seeds) and, when
    the set has several apps, over all its cells (the set's objective): the mean objective
    and its 95 % Student-t interval (NaN with one cell). A group with a failed cell has mean
    +inf, as the set's objective does."""
    rows = []
    for which in ("train", "test"):
        for candidate, trial in (("default", result.default), ("tuned", result.best)):
            if which not in trial.sets:
                continue
            cells = trial.sets[which].cells
            groups: dict[str, list[float]] = {}
            for c in cells:
                groups.setdefault(c.cell.app or "all apps", []).append(c.objective)
            if len(groups) > 1:  # with one app, its row is the set's objective already
                groups[ALL_CELLS] = [c.objective for c in cells]
            for app, values in groups.items():
                rows.append({"set": which, "app": app, "candidate": candidate,
                             "trial": trial.trial, **_mean_ci(np.array(values, dtype=float))})
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def _mean_ci(values: np.ndarray) -> dict[str, Any]:
    failed = int(np.isinf(values).sum())
    out: dict[str, Any] = {"cells": len(values), "failed_cells": failed, "mean": math.inf,
                           "ci95_low": math.nan, "ci95_high": math.nan}
    if failed:
        return out
    out["mean"] = float(values.mean())
    if len(values) > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, len(values) - 1)) * float(values.std(ddof=1)) \
            / math.sqrt(len(values))
        out["ci95_low"], out["ci95_high"] = out["mean"] - half, out["mean"] + half
    return out


def _params(trial: Trial) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(trial.params.items()))


# ----------------------------------------------------------------------------- plots


def trajectory_plot(frame: pd.DataFrame, path: str | Path, *, title: str = "") -> Figure:
    """The search: objective against trial (a point each), best so far as a step line."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    finite = frame.loc[~frame["failed"], "objective"].to_numpy(dtype=float)
    top = float(finite.max()) if finite.size else 1.0
    log = _log_axis(finite)
    handles: list[Any] = []
    for phase, colour in PHASE_COLOURS.items():
        rows = frame[(frame["phase"] == phase) & ~frame["failed"]]
        if len(rows):
            ax.scatter(rows["trial"], rows["objective"], s=28, color=colour, zorder=3,
                       edgecolor="white", linewidth=0.5)
            handles.append(Line2D([], [], marker="o", linestyle="", color=colour,
                                  label=f"{phase} ({len(rows)})"))
    failed = frame[frame["failed"]]
    if len(failed):
        # A failed candidate has no value to draw: an x pinned to the top edge says so.
        ax.scatter(failed["trial"], np.ones(len(failed)), marker="x", color="#d62728",
                   transform=ax.get_xaxis_transform(), clip_on=False, zorder=4)
        handles.append(Line2D([], [], marker="x", linestyle="", color="#d62728",
                              label=f"failed, +inf ({len(failed)})"))
    best = frame[np.isfinite(frame["best_so_far"].to_numpy(dtype=float))]
    if len(best):
        ax.step(best["trial"], best["best_so_far"], where="post", color="black",
                linewidth=1.4, zorder=2)
        handles.append(Line2D([], [], color="black", label="best so far"))
    if log:
        ax.set_yscale("log")
    elif finite.size:
        low, high = min(0.0, float(finite.min())), max(0.0, float(finite.max()))
        pad = 0.08 * ((high - low) or abs(top) or 1.0)  # negative objectives fit too
        ax.set_ylim(bottom=low - (pad if low < 0 else 0.0), top=high + pad)
    ax.set_xlabel("trial (candidates in the order the search asked for them)")
    ax.set_ylabel("train objective (lower is better)" + (", log scale" if log else ""))
    ax.grid(alpha=0.3, linewidth=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5),
               fontsize=9, frameon=False)
    return _save(fig, path)


def comparison_plot(frame: pd.DataFrame, path: str | Path, *, title: str = "") -> Figure:
    """Default against tuned: a panel per set, a group per app and one for all its cells,
    each candidate a point with its 95 % interval; a failed group is a labelled gap."""
    sets = list(dict.fromkeys(frame["set"]))
    groups = max((frame.loc[frame["set"] == s, "app"].nunique() for s in sets), default=1)
    fig = Figure(figsize=(min(2.0 + 1.6 * groups * len(sets), 16.0), 4.2),
                 layout="constrained")
    axes = fig.subplots(1, max(len(sets), 1), squeeze=False)[0]
    for ax, which in zip(axes, sets, strict=True):
        _comparison_panel(ax, frame[frame["set"] == which], which)
    handles = [Line2D([], [], marker="o", color=c, label=k)
               for k, c in CANDIDATE_COLOURS.items()]
    handles.append(Line2D([], [], marker="", linestyle="", label="error bars: 95 % CI "
                          "(Student t) over the group's cells; none with one cell"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _comparison_panel(ax: Any, rows: pd.DataFrame, which: str) -> None:
    apps = list(dict.fromkeys(rows["app"]))
    finite = rows.loc[np.isfinite(rows["mean"].to_numpy(dtype=float)), "mean"]
    log = _log_axis(finite.to_numpy(dtype=float))
    for slot, (candidate, colour) in enumerate(CANDIDATE_COLOURS.items()):
        mine = rows[rows["candidate"] == candidate].set_index("app")
        for i, app in enumerate(apps):
            if app not in mine.index:
                continue
            row = mine.loc[app]
            x = i + (slot - 0.5) * 0.3
            if not math.isfinite(row["mean"]):
                ax.text(x, 0.5, f"{candidate}: failed\n({row['failed_cells']} cells)",
                        transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                        va="center", fontsize=7, color=colour)
                continue
            err = None
            if math.isfinite(row["ci95_low"]):
                err = [[row["mean"] - row["ci95_low"]], [row["ci95_high"] - row["mean"]]]
            ax.errorbar([x], [row["mean"]], yerr=err, fmt="o", color=colour, capsize=3,
                        markersize=6, elinewidth=1.0)
    ax.set_xticks(range(len(apps)), apps, rotation=20 if len(apps) > 2 else 0,
                  ha="right" if len(apps) > 2 else "center", fontsize=8.5)
    ax.set_xlim(-0.6, len(apps) - 0.4)
    if log:
        ax.set_yscale("log")
    ax.set_title(f"[{which}]", fontsize=10)
    ax.set_ylabel("objective (lower is better)" + (", log scale" if log else ""))
    ax.grid(axis="y", alpha=0.3, linewidth=0.6)


def _log_axis(values: np.ndarray) -> bool:
    values = values[np.isfinite(values)]
    return bool(values.size) and bool((values > 0).all()) and float(
        values.max()) > LOG_RATIO * float(values.min())


def _save(fig: Figure, path: str | Path) -> Figure:
    # The caller's path is a temporary name (jsorc_sim.outputs writes and renames): say PNG.
    fig.savefig(path, format="png", dpi=120)
    return fig


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """The frame as CSV; +inf (a failed candidate) is written `inf`, NaN as an empty field."""
    frame.to_csv(path, index=False)
