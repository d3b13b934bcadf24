"""Runs over time (`timeline_plot`): walker latency, placement changes and ready replicas of
one or more runs (run folders written by `Result.save` or an experiment's `save_tables`).

A run's change lane shows a marker per change, named where there is room; above
CHANGE_LANE_LIMIT changes, markers and names would be a solid smear, so the lane counts
them instead: one heat cell per interval of the time axis, its shade and its label the number
of changes in it (the counts sum to the run's changes).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from jsorc_sim.plot_common import (
    OOM_COLOUR,
    check_format,
    legend_width_in,
    place_legend,
    save,
    suptitle,
    with_defaults,
)

RUN_TABLES = ("requests", "decisions", "timeline", "events")
#: A run with more placement changes than this has them counted per interval.
CHANGE_LANE_LIMIT = 40
#: About this many intervals across the time axis when counting.
CHANGE_BINS = 30
COUNT_GID = "change-count"  # the gid of the count labels, so that tests can read them

Changes = list[tuple[float, str]]


def timeline_plot(runs: Mapping[str, str | Path], path: str | Path, *, window_s: float = 10,
                  colours: Mapping[str, str] | None = None) -> Figure:
    """Runs over time, one colour per label. Top: walker latency (mean of the successful
    walkers arriving in each `window_s` window). Middle: a row of placement changes per run
    (markers, with the actions and where they went where there is room, also drawn as faint
    dashed lines across the other panels; counts per interval above CHANGE_LANE_LIMIT
    changes). Bottom: ready replicas of all actions. Out-of-memory events are red dotted lines
    across every panel; the warm-up, when the runs' scenario.toml give it, is shaded."""
    check_format(path)
    if not runs:
        raise ValueError("runs is empty: give at least one label -> run folder")
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    tables = {label: _read_run(label, folder) for label, folder in runs.items()}
    colours = with_defaults(colours, list(tables))
    changes = {label: _placement_changes(t["decisions"]) for label, t in tables.items()}
    end = _end(tables)

    fig = Figure(figsize=(13, 6.4 + 0.3 * len(tables)), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[3.2, 0.35 * len(tables) + 0.3, 1.5])
    ax_lat, ax_chg, ax_rep = axes
    for ax, name in zip(axes, ("latency", "changes", "replicas"), strict=True):
        ax.set_label(name)  # so that callers and tests can find the panels by name
    _draw_latency(ax_lat, tables, colours, changes, window_s)
    _draw_replicas(ax_rep, tables, colours)
    counted = _draw_change_rows(ax_chg, changes, colours, end)
    for label, moments in changes.items():
        if label in counted:  # hundreds of lines would hide the latency under them
            continue
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
    # Wider by the legend's column when it goes right of the panels, which keep their width.
    legend = legend_width_in([str(h.get_label()) for h in handles])
    fig.set_figwidth(13 + legend)
    place_legend(fig, handles)
    apps = sorted({str(a) for t in tables.values() for a in t["requests"]["app"].unique()})
    suptitle(fig, f"{', '.join(apps) or 'runs'}: latency, placement changes and replicas",
             legend_in=legend)
    _label_changes(fig, ax_chg, {k: v for k, v in changes.items() if k not in counted},
                   list(changes), colours)
    return save(fig, path)


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


def _end(tables: dict[str, dict[str, pd.DataFrame]]) -> float:
    """The last moment any run's tables reach (the time axis' right end)."""
    ends = [float(t[name]["ts"].astype(float).max()) for t in tables.values()
            for name in ("requests", "timeline", "decisions") if len(t[name])]
    return max(ends, default=1.0)


def _draw_change_rows(ax: Axes, changes: dict[str, Changes], colours: dict[str, str],
                      end: float) -> set[str]:
    """A row per run: a marker at every moment its placement changed, or, for a run with more
    than CHANGE_LANE_LIMIT changes, their count per interval. Returns the counted runs."""
    labels = list(changes)
    counted = set()
    for row, label in enumerate(labels):
        ax.axhline(-row, color="0.85", linewidth=0.8, zorder=1)
        ts = np.array([t for t, _ in changes[label]], dtype=float)
        if len(ts) > CHANGE_LANE_LIMIT:
            _draw_counts(ax, -row, ts, colours[label], end)
            counted.add(label)
            continue
        ax.plot(ts, [-row] * len(ts), linestyle="none", marker="|", markersize=11,
                markeredgewidth=2, color=colours[label], zorder=3)
    names = [f"{label}\n(per {_bin_width(end):g} s)" if label in counted else label
             for label in labels]
    ax.set_yticks([-row for row in range(len(labels))], names, fontsize=8)
    for tick, label in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_color(colours[label])
    ax.set_ylim(-len(labels) + 0.5, 0.5)
    ax.tick_params(axis="y", length=0)
    ax.set_ylabel("placement\nchanges", fontsize=9)
    return counted


def _bin_width(end: float) -> float:
    """A round interval (1, 2 or 5 x 10^k s) giving at most CHANGE_BINS intervals to `end`."""
    raw = max(end, 1e-9) / CHANGE_BINS
    power = 10.0 ** math.floor(math.log10(raw))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= raw)


def _draw_counts(ax: Axes, y: float, ts: np.ndarray, colour: str, end: float) -> None:
    """One bar (cell) per interval with changes, shaded by its count, the count written on
    it: at most CHANGE_BINS cells and labels however many changes there are."""
    width = _bin_width(end)
    edges = np.arange(0.0, max(end, float(ts.max())) + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    counts, edges = np.histogram(ts, bins=edges)
    used = np.flatnonzero(counts)
    shade = 0.25 + 0.75 * counts[used] / counts.max()
    base = to_rgba(colour)
    cells = [(base[0], base[1], base[2], float(a)) for a in shade]
    ax.bar(edges[used], 0.7, width=width * 0.96, bottom=y - 0.35, align="edge", color=cells,
           zorder=3, label="_changes per interval")
    for i, a in zip(used, shade, strict=True):
        ax.text(edges[i] + width / 2, y, str(int(counts[i])), ha="center", va="center",
                fontsize=6.5, color="white" if a > 0.6 else "0.1", zorder=4, gid=COUNT_GID)


def _label_changes(fig: Figure, ax: Axes, changes: dict[str, Changes], rows: list[str],
                   colours: dict[str, str]) -> None:
    """Name the actions beside each change marker, skipping a name that would overprint the
    previous one of its row (measured after the layout, so this runs last). `rows` is the
    lane's order of runs."""
    fig.draw_without_rendering()
    right = ax.get_window_extent().x1
    for label, moments in changes.items():
        row = rows.index(label)
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

