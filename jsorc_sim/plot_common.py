"""What every plot of an experiment shares: colours, legends and titles that fit, the choice of
scale, the reading of a summary, why a cell has no value, and saving.

Pure helpers (no pyplot, no global state); the figures themselves are in `plots` (bars),
`plot_timeline` and `plot_cost`.
"""

from __future__ import annotations

import itertools
import math
import os
import textwrap
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.ticker import NullFormatter

SUMMARY_COLUMNS = ("scenario", "app", "policy", "metric", "n", "mean", "std", "ci95_low",
                   "ci95_high")
#: An optional summary column: why a cell has no value (overrides the reason read from the
#: cell's cost metrics, e.g. an experiment's record of a failed run).
MISSING_COLUMN = "missing"
HIGHER_IS_BETTER = frozenset({"throughput"})
NO_DATA = "no data (OOM)"
OOM_COLOUR = "#d62728"
# tab10 without its red (out of memory is red), then tab20's lighter shades.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
#: More legend entries than this go in one column right of the panels: a row of them below
#: would be wider than the figure.
LEGEND_ROW_MAX = 4
#: Values whose largest is more than this times their smallest get a log axis (a 90 ms
#: scenario beside a 200,000 ms one would otherwise be a line at zero).
SPAN_MAX = 10.0
LABEL_CHARS = 30
_UNITS = {"throughput": ("throughput", "walker runs/s"),
          "node_memory_gb_s": ("node memory", "GB·s"),
          "replica_memory_gb_s": ("replica memory", "GB·s"),
          "replica_core_s": ("replica cores", "core·s"),
          "peak_node_memory_mb": ("peak node memory", "MB")}
_COUNTS = frozenset({"placement_changes", "cold_starts", "failed_requests", "failed_calls",
                     "oom_events", "policy_errors", "arrivals", "unfinished_requests"})

GridPoint = tuple[Any, ...]
Panel = tuple[str, GridPoint]  # a scenario and a grid point


# ---------------------------------------------------------------------- colours, text


def policy_colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour per policy (or run label), in order: pass it as `colours=` to every plot of
    an experiment so that a policy keeps its colour from figure to figure. Pure."""
    return with_defaults(None, list(dict.fromkeys(labels)))


def with_defaults(given: Mapping[str, str] | None, labels: list[str]) -> dict[str, str]:
    """`given` colours, and palette colours (in order, skipping those taken) for the rest."""
    out = {k: v for k, v in (given or {}).items() if k in labels}
    free = itertools.cycle([c for c in PALETTE if c not in out.values()] or PALETTE)
    return {label: out[label] if label in out else next(free) for label in labels}


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """`text` broken into lines that fit `width_in` inches at `fontsize` points (a character
    is taken as 0.6 em wide, generous for DejaVu Sans), keeping its own line breaks."""
    chars = max(12, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) if line else "" for line in text.split("\n"))


def suptitle(fig: Figure, text: str, fontsize: float = 12, legend_in: float = 0.0) -> None:
    """The figure's title, wrapped so that, centred, it stays clear of a legend column of
    `legend_in` inches on the right (constrained layout puts both at the top)."""
    fig.suptitle(wrap(text, fig.get_figwidth() - 2 * legend_in - 0.4, fontsize),
                 fontsize=fontsize)


def legend_width_in(labels: Sequence[str], fontsize: float = 9) -> float:
    """The width a one-column legend of `labels` takes (handle and padding included)."""
    if len(labels) <= LEGEND_ROW_MAX:
        return 0.0
    longest = max((len(line) for label in labels
                   for line in wrap(label, 99, fontsize).split("\n")), default=0)
    return min(longest, LABEL_CHARS) * 0.6 * fontsize / 72 + 0.9


def place_legend(fig: Figure, handles: Sequence[Artist], fontsize: float = 9) -> Legend:
    """A figure legend the layout makes room for: a row below the panels for a few entries, a
    column on their right for more; long labels wrapped, so that it never leaves the figure."""
    # Wrapped in the legend only: a handle may be a plotted line whose label callers read.
    labels = [textwrap.fill(str(h.get_label()), LABEL_CHARS) for h in handles]
    if len(handles) > LEGEND_ROW_MAX:
        return fig.legend(list(handles), labels, loc="outside right upper", ncols=1,
                          fontsize=fontsize, frameon=False)
    per_row = max(1, min(len(handles), int(fig.get_figwidth() / 2.6)))
    return fig.legend(list(handles), labels, loc="outside lower center", ncols=per_row,
                      fontsize=fontsize, frameon=False)


def metric_label(metric: str, unit: bool = True) -> str:
    if metric.endswith("_latency"):
        head = metric.removesuffix("_latency")
        name = "average latency" if head == "average" else f"{head} percentile latency"
        suffix = "ms"
    elif metric in _UNITS:
        name, suffix = _UNITS[metric]
    else:
        name, suffix = metric.replace("_", " "), "count" if metric in _COUNTS else ""
    return f"{name} ({suffix})" if unit and suffix else name


def seeds_note(rows: pd.DataFrame, ci: bool = True) -> str:
    numbers = pd.to_numeric(rows["n"], errors="coerce").dropna()
    counts = numbers[numbers > 0].unique()
    if len(counts) == 0:
        return ""
    if len(counts) == 1 and int(counts[0]) <= 1:
        return " (one seed, no CI)"
    seeds = f"{int(counts[0])} seeds" if len(counts) == 1 else "seeds"
    return f" (mean of {seeds}, 95 % CI)" if ci else f" (means of {seeds})"


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:.0f}"
    return "—" if pd.isna(value) else str(value)


# ---------------------------------------------------------------------- scales


def spread(values: Any) -> float:
    """Largest over smallest of the finite positive `values` (1 with fewer than two)."""
    array = np.asarray(values, dtype=float).ravel()
    array = array[np.isfinite(array) & (array > 0)]
    return float(array.max() / array.min()) if array.size > 1 else 1.0


def needs_log(values: Any) -> bool:
    return spread(values) > SPAN_MAX


def log_axis(ax: Axes, axis: str, values: Any) -> str:
    """Log scale on `axis` ("x" or "y") of `ax` when `values` span more than SPAN_MAX; symlog
    (linear below the smallest positive value) when some are 0, which log cannot place.
    Returns the note for the axis label ("" when linear)."""
    array = np.asarray(values, dtype=float).ravel()
    array = array[np.isfinite(array)]
    if not needs_log(array):
        return ""
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    note = "log scale"
    if (array <= 0).any():
        setter("symlog", linthresh=float(array[array > 0].min()))
        note = "symlog scale"
    else:
        setter("log")
    # Over more than a decade the major ticks suffice; labelled minor ones overprint.
    (ax.xaxis if axis == "x" else ax.yaxis).set_minor_formatter(NullFormatter())
    return note


def finite_max(values: pd.Series | np.ndarray, default: float) -> float:
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    return float(array.max()) if array.size and array.max() > 0 else default


# ---------------------------------------------------------------------- summary input


def check_summary(summary: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The summary with a float `mean`, a `missing` reason on every row, and its grid columns
    (every column not of the summary's own), or ValueError naming what is missing."""
    if not isinstance(summary, pd.DataFrame):
        raise ValueError(f"summary must be a pandas DataFrame, got {type(summary).__name__}")
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks column(s) {', '.join(missing)} "
                         f"(expected {', '.join(SUMMARY_COLUMNS)} plus grid columns)")
    present = ordered(summary["metric"])
    unknown = [m for m in metrics if m not in present]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}: the summary has "
                         f"{', '.join(present) or 'no metric'}")
    out = summary.copy()
    for column in ("mean", "ci95_low", "ci95_high"):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    grid = [c for c in summary.columns if c not in (*SUMMARY_COLUMNS, MISSING_COLUMN)]
    out[MISSING_COLUMN] = missing_reasons(out, grid)
    return out, grid


def missing_reasons(summary: pd.DataFrame, grid: list[str]) -> pd.Series:
    """Why each row's cell would have no value, read from the same cell's other metrics: a
    `missing` column's own text first, then "policy error (N)" (N decisions failed, over its
    seeds), NO_DATA (it ran out of memory), "no data (unfinished)" (requests still in the
    system), "no data (run failed)" (no seed produced a report) and "no data"."""
    keys = summary[["scenario", "app", *grid, "policy"]].astype(str).agg("\x1f".join, axis=1)
    n = pd.to_numeric(summary["n"], errors="coerce").fillna(0)
    frame = pd.DataFrame({"key": keys, "metric": summary["metric"].astype(str),
                          "total": summary["mean"].fillna(0) * n, "n": n})
    totals = frame.pivot_table(index="key", columns="metric", values="total", aggfunc="sum")
    reported = frame.groupby("key")["n"].max()

    def count(metric: str) -> np.ndarray:
        column = totals[metric] if metric in totals.columns else pd.Series(0.0, totals.index)
        return column.reindex(keys).fillna(0).to_numpy(dtype=float)

    errors, ooms, unfinished = count("policy_errors"), count("oom_events"), \
        count("unfinished_requests")
    never = reported.reindex(keys).fillna(0).to_numpy() == 0
    reasons = np.select(
        [errors > 0, ooms > 0, unfinished > 0, never],
        [[f"policy error ({round(e)})" for e in errors], NO_DATA, "no data (unfinished)",
         "no data (run failed)"], default="no data")
    out = pd.Series(reasons, index=summary.index, dtype=object)
    if MISSING_COLUMN in summary.columns:
        given = summary[MISSING_COLUMN].fillna("").astype(str)
        out = out.where(given == "", given)
    return out


def ordered(values: pd.Series) -> list[str]:
    return [str(v) for v in dict.fromkeys(values.tolist())]


def panels_of(rows: pd.DataFrame, grid: list[str]) -> list[Panel]:
    """A panel per scenario (in order of appearance) and grid point (sorted): scenarios are
    different worlds, whose values need not share a scale."""
    out: list[Panel] = []
    for scenario in ordered(rows["scenario"]):
        mine = rows[rows["scenario"].astype(str) == scenario]
        out.extend((scenario, point) for point in grid_points(mine, grid))
    return out


def grid_points(rows: pd.DataFrame, grid: list[str]) -> list[GridPoint]:
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


def select(rows: pd.DataFrame, grid: list[str], panel: Panel) -> pd.DataFrame:
    scenario, point = panel
    mask = rows["scenario"].astype(str) == scenario
    for column, value in zip(grid, point, strict=True):
        mask &= rows[column].isna() if pd.isna(value) else rows[column] == value
    return rows[mask]


def panel_title(grid: list[str], panel: Panel, *, scenarios: bool) -> str:
    scenario, point = panel
    parts = [scenario] if scenarios else []
    parts.extend(f"{c} = {fmt(v)}" for c, v in zip(grid, point, strict=True))
    return ", ".join(parts)


def x_keys(rows: pd.DataFrame) -> list[tuple[str, str]]:
    return [(str(s), str(a)) for s, a in dict.fromkeys(zip(rows["scenario"], rows["app"],
                                                           strict=True))]


def along(frame: pd.DataFrame, keys: list[tuple[str, str]], column: str,
          dtype: type = float) -> np.ndarray:
    """`column` of `frame` at every (scenario, app) of `keys`, NaN where it has no row."""
    by_key = frame.set_index([frame["scenario"].astype(str), frame["app"].astype(str)])[column]
    by_key = by_key[~by_key.index.duplicated(keep="last")]
    return by_key.reindex(pd.MultiIndex.from_tuples(keys)).to_numpy(dtype=dtype)


def has(frame: pd.DataFrame, keys: list[tuple[str, str]]) -> np.ndarray:
    """Whether `frame` has a row for each (scenario, app) of `keys`."""
    found = set(zip(frame["scenario"].astype(str), frame["app"].astype(str), strict=True))
    return np.array([key in found for key in keys], dtype=bool)


# ---------------------------------------------------------------------- saving


def check_format(path: str | Path) -> str:
    fmt_ = Path(path).suffix.lower().lstrip(".")
    if fmt_ not in ("png", "svg"):
        raise ValueError(f"plot path {str(path)!r} must end in .png or .svg")
    return fmt_


def save(fig: Figure, path: str | Path) -> Figure:
    fmt_ = check_format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 would make the plot unreadable to others; a unique name will do.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fig.savefig(tmp, format=fmt_, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return fig
