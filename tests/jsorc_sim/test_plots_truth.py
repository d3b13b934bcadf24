"""Plots that tell the truth: nothing clipped with many policies, a log axis or a panel of its
own where values differ by more than 10x, missing cells as labelled gaps, CIs on speed-ups,
a change lane that stays readable at hundreds of changes, and latency against cost with its
Pareto front.

Expected values are computed here from the raw numbers (numpy, scipy, a brute-force
dominance check), never read back from the plotting code.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text
from scipy import stats

from jsorc_sim.experiment import load_experiment, pair, run_experiment, summarise
from jsorc_sim.plot_cost import FRONT_GID
from jsorc_sim.plot_timeline import CHANGE_BINS, COUNT_GID
from jsorc_sim.plots import (
    CHANGE_LANE_LIMIT,
    NO_DATA,
    cost_plot,
    pareto_front,
    speedup_plot,
    summary_plot,
    timeline_plot,
)
from tests.conftest import REPO

# Seven policies, some with long names (the summary.png clipped these).
POLICIES = ["all_remote", "evaluation", "model_based",
            "all_remote+horizontal_pod_autoscaler_with_a_long_name", "all_remote+kpa",
            "all_remote+ray_serve_tuned_for_the_llm_trace", "evaluation+hpa"]
SEEDS = (1, 2, 3)
# Mean latency per scenario and policy (ms): the LLM trace is ~2000x the functions' one.
LATENCY = {"azure_llm_2023": [202_000, 201_000, 700, 3600, 10_000, 2600, 3600],
           "azure_functions_2019": [93, 85, 75, 93, 93, 93, 85]}
CORES = {"azure_llm_2023": [7000, 4000, 28_000, 18_000, 150_000, 90_000, 17_500],
         "azure_functions_2019": [18_000, 16_000, 13_000, 18_000, 18_900, 18_000, 16_000]}


def tidy_results() -> pd.DataFrame:
    """An experiment's tidy results (one row per cell and metric), with seed noise, in the
    shape `experiment.collect` writes."""
    rng = np.random.default_rng(7)
    rows = []
    for scenario, latencies in LATENCY.items():
        for k, policy in enumerate(POLICIES):
            for seed in SEEDS:
                noise = 1 + 0.02 * rng.standard_normal(4)
                values = {"average_latency": latencies[k] * noise[0],
                          "99th_latency": 3 * latencies[k] * noise[1],
                          "throughput": 2.0 * noise[2],
                          "replica_core_s": CORES[scenario][k] * noise[3],
                          "node_memory_gb_s": 500.0 + 400 * k,
                          "oom_events": 0.0, "policy_errors": 0.0,
                          "unfinished_requests": 0.0}
                for metric, value in values.items():
                    rows.append({"cell": f"{scenario}-{policy}-{seed}", "scenario": scenario,
                                 "app": "all", "policy": policy, "policy_name": policy,
                                 "params": "{}", "seed": seed, "trace": "", "status": "ok",
                                 "error": "", "metric": metric, "value": value})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return tidy_results()


@pytest.fixture(scope="module")
def summary(results: pd.DataFrame) -> pd.DataFrame:
    return summarise(results)


@pytest.fixture(scope="module")
def paired(results: pd.DataFrame) -> pd.DataFrame:
    return pair(results, "all_remote")


def drawn(fig: Figure) -> Figure:
    FigureCanvasAgg(fig).draw()
    return fig


def bars(ax: Axes) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


# ---------------------------------------------------------------------- runs over time


def fake_run(folder: Path, changes: np.ndarray, *, end: float = 3600.0) -> Path:
    """A run folder as `Result.save` writes it, holding only what the timeline reads: a walker
    every 5 s, a ready replica, and a placement change at each of `changes`."""
    folder.mkdir(parents=True)
    ts = np.arange(0.0, end, 5.0)
    pd.DataFrame({"ts": ts, "request_id": np.arange(len(ts)), "app": "chat",
                  "latency_ms": 100 + 10 * np.sin(ts / 100), "ok": True, "error": ""}
                 ).to_parquet(folder / "requests.parquet")
    pd.DataFrame({"ts": np.sort(changes), "action": "llm",
                  "placement": [f"remote:{1 + i % 3}" for i in range(len(changes))],
                  "previous": "remote:1", "source": "kpa", "reason": "", "error": ""}
                 ).to_parquet(folder / "decisions.parquet")
    pd.DataFrame({"ts": ts, "action": "llm", "replicas_ready": 1}
                 ).to_parquet(folder / "timeline.parquet")
    pd.DataFrame({"ts": pd.Series([], dtype=float), "kind": pd.Series([], dtype=str),
                  "detail": pd.Series([], dtype=str)}).to_parquet(folder / "events.parquet")
    return folder


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Seven runs; all_remote+kpa changes placement 300 times, the others a few times."""
    out = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(3)
    runs = {}
    for k, policy in enumerate(POLICIES):
        count = 300 if policy == "all_remote+kpa" else 2 + k
        runs[policy] = fake_run(out / f"run{k}", rng.uniform(1, 3599, count))
    return runs


# ---------------------------------------------------------------------- 1. nothing clipped


def every_figure(summary: pd.DataFrame, paired: pd.DataFrame, runs: dict[str, Path],
                 out: Path) -> dict[str, Figure]:
    return {"summary": summary_plot(summary, "average_latency", out / "summary.png"),
            "speedup": speedup_plot(summary, "all_remote", out / "speedup.png",
                                    paired=paired),
            "cost": cost_plot(summary, out / "cost.png"),
            "timeline": timeline_plot(runs, out / "timeline.png")}


def titles(fig: Figure) -> list[Text]:
    found = [ax.title for ax in fig.axes if ax.get_title()]
    for holder in [fig, *fig.subfigs]:
        if holder._suptitle is not None:  # no public getter for the Text itself
            found.append(holder._suptitle)
    return found


def test_legends_and_titles_lie_inside_the_figure_with_seven_policies(
        summary: pd.DataFrame, paired: pd.DataFrame, many_runs: dict[str, Path],
        tmp_path: Path) -> None:
    for kind, fig in every_figure(summary, paired, many_runs, tmp_path).items():
        drawn(fig)
        page = fig.bbox
        (legend,) = fig.legends
        names = " ".join(t.get_text().replace("\n", "") for t in legend.get_texts())
        assert "all_remote+ray_serve_tuned_for_the_llm_trace" in names, kind
        boxes = {"legend": legend.get_window_extent()}
        boxes.update({f"title {t.get_text()!r}": t.get_window_extent() for t in titles(fig)})
        assert len(boxes) >= 2, kind  # the legend and at least the figure title
        for what, box in boxes.items():
            assert page.x0 <= box.x0 and box.x1 <= page.x1, (kind, what, box, page)
            assert page.y0 <= box.y0 and box.y1 <= page.y1, (kind, what, box, page)
        assert not boxes["legend"].overlaps(fig._suptitle.get_window_extent()), kind
        assert (tmp_path / f"{kind}.png").stat().st_size > 1000


def test_a_few_policies_have_their_legend_below_and_many_on_the_right(
        summary: pd.DataFrame, tmp_path: Path) -> None:
    few = summary[summary["policy"].isin(POLICIES[:3])]
    for rows, side in ((few, "below"), (summary, "right")):
        fig = drawn(summary_plot(rows, "average_latency", tmp_path / "s.png"))
        legend = fig.legends[0].get_window_extent()
        panels = [ax.get_window_extent() for ax in fig.axes]
        if side == "below":
            assert legend.y1 <= min(p.y0 for p in panels)
        else:
            assert legend.x0 >= max(p.x1 for p in panels)


# ---------------------------------------------------------------------- 2. scales


def test_scenarios_10x_apart_get_their_own_panels_and_a_wide_one_a_log_axis(
        summary: pd.DataFrame, tmp_path: Path) -> None:
    fig = drawn(summary_plot(summary, "average_latency", tmp_path / "s.png"))
    llm, functions = fig.axes
    assert [llm.get_title(), functions.get_title()] == list(LATENCY)
    # The functions' panel is its own linear axis, scaled to its ~90 ms: every bar is tall.
    assert functions.get_yscale() == "linear"
    top = functions.get_ylim()[1]
    assert max(LATENCY["azure_functions_2019"]) < top < 2 * max(LATENCY["azure_functions_2019"])
    for container in bars(functions):
        assert all(p.get_height() > 0.5 * top for p in container.patches)
    # Within the LLM panel 700 ms sits beside 202,000 ms (x290): log, both inside the range.
    assert max(LATENCY["azure_llm_2023"]) / min(LATENCY["azure_llm_2023"]) > 10
    assert llm.get_yscale() == "log"
    low, high = llm.get_ylim()
    assert low < min(LATENCY["azure_llm_2023"]) * 0.98
    assert high > max(LATENCY["azure_llm_2023"]) * 1.02
    assert "log scale" in llm.get_ylabel()


def test_speedups_over_10x_are_on_a_log_axis_with_bars_from_one(
        summary: pd.DataFrame, tmp_path: Path) -> None:
    fig = drawn(speedup_plot(summary, "all_remote", tmp_path / "s.png",
                             metrics=["average_latency"]))
    llm, functions = fig.axes
    assert llm.get_yscale() == "log" and functions.get_yscale() == "linear"
    means = summary[(summary["metric"] == "average_latency")
                    & (summary["scenario"] == "azure_llm_2023")].set_index("policy")["mean"]
    for container in bars(llm):
        (patch,) = container.patches
        assert patch.get_y() == 1.0  # from the baseline's 1, so length is log(speed-up)
        expected = means["all_remote"] / means[container.get_label()]
        assert patch.get_y() + patch.get_height() == pytest.approx(expected)


# ---------------------------------------------------------------------- 3. missing cells


def with_missing(results: pd.DataFrame) -> pd.DataFrame:
    """evaluation ran out of memory, model_based's policy failed 12 times (4 per seed),
    all_remote+kpa's cells failed outright, evaluation+hpa left requests unfinished: none has
    a latency on the functions trace."""
    out = results.copy()
    on = out["scenario"] == "azure_functions_2019"
    latency = out["metric"].str.endswith("_latency")
    for policy, metric, value in [("evaluation", "oom_events", 3.0),
                                  ("model_based", "policy_errors", 4.0),
                                  ("evaluation+hpa", "unfinished_requests", 9.0)]:
        mine = on & (out["policy"] == policy)
        out.loc[mine & latency, "value"] = math.nan
        out.loc[mine & (out["metric"] == metric), "value"] = value
    failed = on & (out["policy"] == "all_remote+kpa")
    out.loc[failed, "value"] = math.nan
    out.loc[failed, "status"] = "error"
    return out


def slot_x(group: int, slot: int, slots: int) -> float:
    width = 0.8 / slots
    return group + (slot - (slots - 1) / 2) * width


def test_a_cell_without_a_value_is_a_labelled_gap_not_a_bar(results: pd.DataFrame,
                                                            tmp_path: Path) -> None:
    summary = summarise(with_missing(results))
    fig = drawn(summary_plot(summary, "average_latency", tmp_path / "s.png"))
    _, functions = fig.axes
    expected = {"evaluation": NO_DATA, "model_based": "policy error (12)",
                "all_remote+kpa": "no data (run failed)",
                "evaluation+hpa": "no data (unfinished)"}
    labels = {t.get_text(): t for t in functions.texts if t.get_gid() == "missing"}
    assert set(labels) == set(expected.values())
    width = 0.8 / len(POLICIES)
    for policy, reason in expected.items():
        x = slot_x(0, POLICIES.index(policy), len(POLICIES))
        assert labels[reason].get_position()[0] == pytest.approx(x)
        assert not [p for p in functions.patches
                    if p.get_x() - 1e-9 <= x <= p.get_x() + p.get_width() + 1e-9], policy
        assert not [p for c in bars(functions) if c.get_label() == policy
                    for p in c.patches]
    # The three that have data keep their bars, each at its mean.
    means = summary[(summary["metric"] == "average_latency")
                    & (summary["scenario"] == "azure_functions_2019")].set_index("policy")
    for container in bars(functions):
        for patch in container.patches:
            assert patch.get_height() == pytest.approx(means.loc[container.get_label(),
                                                                 "mean"])
            assert abs(patch.get_x() + width / 2 - slot_x(
                0, POLICIES.index(container.get_label()), len(POLICIES))) < 1e-9


def test_a_speedup_without_its_baseline_names_the_baseline(results: pd.DataFrame,
                                                           tmp_path: Path) -> None:
    summary = summarise(with_missing(results))
    fig = speedup_plot(summary, "evaluation", tmp_path / "s.png",
                       metrics=["average_latency"])
    _, functions = fig.axes
    missing = [t.get_text() for t in functions.texts if t.get_gid() == "missing"]
    # all_remote and all_remote+hpa ran but evaluation (the baseline) ran out of memory.
    assert missing.count(f"evaluation: {NO_DATA}") == 3  # all_remote, +hpa, +ray_serve
    assert "policy error (12)" in missing
    assert not bars(functions) or not any(c.patches for c in bars(functions))


# ---------------------------------------------------------------------- 4. CIs on speed-ups


def test_speedup_error_bars_are_the_paired_ci_carried_through_the_ratio(
        results: pd.DataFrame, summary: pd.DataFrame, paired: pd.DataFrame,
        tmp_path: Path) -> None:
    fig = speedup_plot(summary, "all_remote", tmp_path / "s.png",
                       metrics=["average_latency", "throughput"], paired=paired)
    t = stats.t.ppf(0.975, len(SEEDS) - 1)
    checked = unbounded = 0
    for ax, (metric, scenario) in zip(fig.axes, itertools.product(
            ["average_latency", "throughput"], LATENCY), strict=True):
        raw = results[(results["metric"] == metric) & (results["scenario"] == scenario)]
        base = raw[raw["policy"] == "all_remote"].sort_values("seed")["value"].to_numpy()
        for container in bars(ax):
            mine = raw[raw["policy"] == container.get_label()].sort_values("seed")
            diff = mine["value"].to_numpy() - base
            half = t * diff.std(ddof=1) / math.sqrt(len(diff))
            d_low, d_high = diff.mean() - half, diff.mean() + half
            b = base.mean()
            if metric == "throughput":
                want = [(b + d_low) / b, (b + d_high) / b]
            else:  # a latency CI reaching 0: the speed-up has no upper bound
                want = [b / (b + d_high), b / (b + d_low) if b + d_low > 0 else math.inf]
            assert container.errorbar is not None
            (segment,) = container.errorbar.lines[2][0].get_segments()
            got = sorted(segment[:, 1])
            assert got[0] == pytest.approx(want[0], rel=1e-9)
            if math.isinf(want[1]):
                unbounded += 1
                assert got[1] > ax.get_ylim()[1]  # drawn through the top of the panel
            else:
                assert got[1] == pytest.approx(want[1], rel=1e-9)
            checked += 1
    assert checked == 2 * 2 * (len(POLICIES) - 1)
    assert unbounded >= 1  # model_based's 290x on the LLM trace: noise of 2 % of 202 s


def test_speedup_without_paired_has_no_error_bars_and_refuses_a_bad_paired(
        summary: pd.DataFrame, paired: pd.DataFrame, tmp_path: Path) -> None:
    fig = speedup_plot(summary, "all_remote", tmp_path / "s.png", metrics=["average_latency"])
    assert all(c.errorbar is None for ax in fig.axes for c in bars(ax))
    with pytest.raises(ValueError, match=r"paired lacks column.*ci95_high"):
        speedup_plot(summary, "all_remote", tmp_path / "s.png",
                     paired=paired.drop(columns="ci95_high"))


# ---------------------------------------------------------------------- 5. change lane


def test_hundreds_of_changes_are_counted_per_interval(many_runs: dict[str, Path],
                                                      tmp_path: Path) -> None:
    fig = drawn(timeline_plot(many_runs, tmp_path / "t.png"))
    (lane,) = [ax for ax in fig.axes if ax.get_label() == "changes"]
    artists = len(lane.patches) + len(lane.texts) + len(lane.lines) + len(lane.collections)
    assert artists <= 2 * CHANGE_BINS + 3 * len(many_runs) + 40
    counts = [t for t in lane.texts if t.get_gid() == COUNT_GID]
    assert 0 < len(counts) <= CHANGE_BINS
    assert sum(int(t.get_text()) for t in counts) == 300
    # Each count is the number of changes inside its cell, counted here with numpy.
    decisions = pd.read_parquet(many_runs["all_remote+kpa"] / "decisions.parquet")
    (cells,) = [c for c in bars(lane)]
    assert len(cells.patches) == len(counts)
    width = max(p.get_width() for p in cells.patches) / 0.96
    for patch, text in zip(cells.patches, counts, strict=True):
        inside = ((decisions["ts"] >= patch.get_x()) & (decisions["ts"] < patch.get_x() + width))
        assert int(text.get_text()) == int(inside.sum())
    # The other runs (2 to 8 changes) keep a marker at every change.
    markers = [line for line in lane.get_lines() if line.get_marker() == "|"]
    assert sorted(len(line.get_xdata()) for line in markers) == \
        sorted(2 + k for k, p in enumerate(POLICIES) if p != "all_remote+kpa")
    assert CHANGE_LANE_LIMIT < 300


# ---------------------------------------------------------------------- 6. latency vs cost


def dominated(i: int, cost: np.ndarray, latency: np.ndarray) -> bool:
    return any(cost[j] <= cost[i] and latency[j] <= latency[i]
               and (cost[j] < cost[i] or latency[j] < latency[i])
               for j in range(len(cost)) if j != i and np.isfinite(cost[j] + latency[j]))


def brute_front(cost: np.ndarray, latency: np.ndarray) -> set[int]:
    return {i for i in range(len(cost))
            if np.isfinite(cost[i] + latency[i]) and not dominated(i, cost, latency)}


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_is_the_set_no_point_dominates(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    cost = rng.integers(0, 6, n).astype(float)  # small integers: ties and duplicates
    latency = rng.integers(0, 6, n).astype(float)
    cost[rng.random(n) < 0.15] = math.nan
    front = pareto_front(cost, latency)
    assert set(front) == brute_front(cost, latency)
    assert list(cost[front]) == sorted(cost[front])


def test_cost_plot_draws_each_policy_and_the_front(summary: pd.DataFrame,
                                                   tmp_path: Path) -> None:
    fig = drawn(cost_plot(summary, tmp_path / "c.png"))
    assert len(fig.axes) == 2 * len(LATENCY)
    for k, (scenario, cost_metric) in enumerate(itertools.product(
            LATENCY, ["replica_core_s", "node_memory_gb_s"])):
        ax = fig.axes[k]
        rows = summary[summary["scenario"] == scenario]
        lat = rows[rows["metric"] == "average_latency"].set_index("policy")["mean"]
        cost = rows[rows["metric"] == cost_metric].set_index("policy")["mean"]
        lat, cost = lat.reindex(POLICIES).to_numpy(), cost.reindex(POLICIES).to_numpy()
        front = sorted(brute_front(cost, lat), key=lambda i: cost[i])
        (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == FRONT_GID]
        assert list(line.get_xdata()) == pytest.approx(cost[front])
        assert list(line.get_ydata()) == pytest.approx(lat[front])
        assert line.get_drawstyle() == "steps-post"
        _, labels = ax.get_legend_handles_labels()
        assert labels == POLICIES  # a point (with its CIs) per policy
        named = " ".join(t.get_text() for t in ax.texts)
        assert all(p in named for p in POLICIES)
        assert cost_metric.split("_")[0] in ax.get_xlabel()
    assert fig.axes[0].get_yscale() == "log"  # 700 ms beside 202,000 ms
    assert fig.axes[2].get_yscale() == "linear"


def test_cost_plot_lists_a_policy_without_data_instead_of_plotting_it(
        results: pd.DataFrame, tmp_path: Path) -> None:
    fig = cost_plot(summarise(with_missing(results)), tmp_path / "c.png")
    notes = " ".join(t.get_text().replace("\n", " ") for t in fig.axes[2].texts)
    assert f"evaluation: {NO_DATA}" in notes and "model_based: policy error (12)" in notes
    _, labels = fig.axes[2].get_legend_handles_labels()
    assert labels == ["all_remote", "all_remote+horizontal_pod_autoscaler_with_a_long_name",
                      "all_remote+ray_serve_tuned_for_the_llm_trace"]


def experiment_file(tmp_path: Path, policies: list[str], plots: str | None) -> Path:
    lines = ['name = "cost_check"', "seeds = [1, 2]", "duration_s = 120",
             *([f"plots = {plots}"] if plots is not None else []),
             "[[scenario]]",
             f'file = "{REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"}"',
             'apps = ["sentence_pairing"]']
    for policy in policies:
        lines += ["[[policy]]", f'name = "{policy}"']
    path = tmp_path / f"exp_{len(policies)}_{plots is None}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_experiment_with_two_policies_writes_the_cost_plot_by_default(
        tmp_path: Path) -> None:
    exp = load_experiment(experiment_file(tmp_path, ["all_local", "all_remote"], None))
    assert exp.plots == ("summary", "cost")
    done = run_experiment(exp, tmp_path / "two", workers=1, progress=False)
    assert (tmp_path / "two" / "cost.png").read_bytes().startswith(b"\x89PNG")
    # The plotted points are the experiment's own means.
    lat = done.summary[done.summary["metric"] == "average_latency"].set_index("policy")
    assert np.isfinite(lat["mean"]).all()
    one = load_experiment(experiment_file(tmp_path, ["all_remote"], None))
    assert one.plots == ("summary",)
    asked = load_experiment(experiment_file(tmp_path, ["all_remote"], '["cost"]'))
    assert asked.plots == ("cost",)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["status"] == "done"
