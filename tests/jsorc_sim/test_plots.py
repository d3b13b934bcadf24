"""Plots of experiments: what each figure holds (bars, lines, marks), checked on its artists.

Bar plots take a hand-made summary whose speed-ups are known by construction; the timeline
reads runs of JSORC's loadtest written by the real simulator (`Result.save`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.plots import (
    NO_DATA,
    OOM_COLOUR,
    policy_colours,
    speedup_plot,
    summary_plot,
    timeline_plot,
)
from jsorc_sim.simulate import simulate
from policies import Placement
from tests.conftest import REPO

LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"
POLICIES = ["all_local", "all_remote", "model_based"]
APPS = ["sentence_pairing", "flow_analysis"]
NAN = math.nan

# mean per (memory, app, policy): average_latency ms, throughput /s, 99th_latency ms.
# all_local runs flow_analysis out of memory on the 4 GB node: no latency, throughput 0.
MEANS = {
    (4096, "sentence_pairing"): {"all_local": (45, 22, 80), "all_remote": (60, 16, 96),
                                 "model_based": (45, 22, 80)},
    (4096, "flow_analysis"): {"all_local": (NAN, 0, NAN), "all_remote": (150, 6, 264),
                              "model_based": (120, 8, 240)},
    (8192, "sentence_pairing"): {"all_local": (40, 24, 75), "all_remote": (60, 16, 90),
                                 "model_based": (40, 24, 75)},
    (8192, "flow_analysis"): {"all_local": (125, 8, 220), "all_remote": (150, 6, 264),
                              "model_based": (125, 8, 220)},
}
METRICS = ("average_latency", "throughput", "99th_latency")
OOMS = {(4096, "flow_analysis", "all_local"): 4}  # the oom_events behind the NaNs above


def make_summary() -> pd.DataFrame:
    rows = []
    for (memory, app), by_policy in MEANS.items():
        for policy, values in by_policy.items():
            for metric, mean in zip(METRICS, values, strict=True):
                half = 0.05 * mean
                rows.append({"scenario": "loadtest", "app": app, "policy": policy,
                             "metric": metric, "n": 3, "mean": mean, "std": half,
                             "ci95_low": mean - half, "ci95_high": mean + half,
                             "node.memory_mb": memory})
            ooms = OOMS.get((memory, app, policy), 0)
            rows.append({"scenario": "loadtest", "app": app, "policy": policy,
                         "metric": "oom_events", "n": 3, "mean": ooms, "std": 0.0,
                         "ci95_low": ooms, "ci95_high": ooms, "node.memory_mb": memory})
    return pd.DataFrame(rows)


@pytest.fixture
def summary() -> pd.DataFrame:
    return make_summary()


def bars(ax: Axes) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def heights(container: BarContainer) -> list[float]:
    return [patch.get_height() for patch in container.patches]


def finite(values: list[float]) -> list[float]:
    """The values that have a bar: a missing one is a labelled gap, not a bar of height 0."""
    return [v for v in values if not math.isnan(v)]


def texts(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def assert_written(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000
    if path.suffix == ".png":
        assert data.startswith(b"\x89PNG")
    else:
        assert b"<svg" in data[:1000]


# ---------------------------------------------------------------------- summary_plot


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_summary_plot_writes_the_file(summary: pd.DataFrame, tmp_path: Path,
                                      suffix: str) -> None:
    fig = summary_plot(summary, "average_latency", tmp_path / "sub" / f"summary{suffix}")
    assert isinstance(fig, Figure)
    assert_written(tmp_path / "sub" / f"summary{suffix}")
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]


def test_summary_plot_has_a_panel_per_grid_point_and_a_bar_group_per_policy(
        summary: pd.DataFrame, tmp_path: Path) -> None:
    fig = summary_plot(summary, "average_latency", tmp_path / "s.png")
    assert [ax.get_title() for ax in fig.axes] == ["node.memory_mb = 4096",
                                                   "node.memory_mb = 8192"]
    for ax, memory in zip(fig.axes, (4096, 8192), strict=True):
        containers = bars(ax)
        assert [c.get_label() for c in containers] == POLICIES
        for container, policy in zip(containers, POLICIES, strict=True):
            expected = [MEANS[memory, app][policy][0] for app in APPS]
            assert heights(container) == pytest.approx(finite(expected))
            assert container.errorbar is not None  # the 95 % CI
        assert [t.get_text() for t in ax.get_xticklabels()] == APPS
    assert fig.axes[0].get_ylabel() == "average latency (ms)"


def test_summary_plot_marks_missing_data_instead_of_dropping_it(summary: pd.DataFrame,
                                                                tmp_path: Path) -> None:
    fig = summary_plot(summary, "99th_latency", tmp_path / "s.png")
    at_4gb, at_8gb = fig.axes
    assert texts(at_4gb).count(NO_DATA) == 1
    assert NO_DATA not in texts(at_8gb)
    # all_local's flow_analysis slot at 4 GB: its label, and no bar (not even a 0 one).
    (label,) = [t for t in at_4gb.texts if t.get_text() == NO_DATA]
    (local,) = [c for c in bars(at_4gb) if c.get_label() == "all_local"]
    assert len(local.patches) == 1  # sentence_pairing's only
    assert not any(p.get_x() <= label.get_position()[0] <= p.get_x() + p.get_width()
                   for p in at_4gb.patches)


def test_summary_plot_throughput_is_per_second_and_a_zero_is_shown(
        summary: pd.DataFrame, tmp_path: Path) -> None:
    fig = summary_plot(summary, "throughput", tmp_path / "s.png")
    assert fig.axes[0].get_ylabel().endswith("/s)")
    assert "0" in texts(fig.axes[0])  # all_local's 0 walker runs/s: no bar to see otherwise
    assert NO_DATA not in texts(fig.axes[0])


def test_summary_plot_without_grid_columns_has_one_panel(summary: pd.DataFrame,
                                                         tmp_path: Path) -> None:
    one = summary[summary["node.memory_mb"] == 8192].drop(columns="node.memory_mb")
    fig = summary_plot(one, "average_latency", tmp_path / "s.png")
    assert len(fig.axes) == 1
    assert len(bars(fig.axes[0])) == len(POLICIES)


def test_summary_plot_skips_a_policy_not_run_at_a_grid_point(summary: pd.DataFrame,
                                                             tmp_path: Path) -> None:
    # An experiment's `only = {...}`: model_based ran at 8 GB only.
    only = summary[(summary["policy"] != "model_based") | (summary["node.memory_mb"] == 8192)]
    fig = summary_plot(only, "average_latency", tmp_path / "s.png")
    assert [c.get_label() for c in bars(fig.axes[0])] == ["all_local", "all_remote"]
    assert [c.get_label() for c in bars(fig.axes[1])] == POLICIES
    assert texts(fig.axes[0]).count(NO_DATA) == 1  # all_local's OOM; not model_based's absence


def test_missing_rows_are_left_blank_not_marked_no_data(summary: pd.DataFrame,
                                                        tmp_path: Path) -> None:
    # flow_analysis not run at 8 GB, model_based only at 8 GB.
    rows = summary[((summary["app"] != "flow_analysis") | (summary["node.memory_mb"] == 4096))
                   & ((summary["policy"] != "model_based")
                      | (summary["node.memory_mb"] == 8192))]
    fig = speedup_plot(rows, "all_remote", tmp_path / "s.png", metrics=["average_latency"])
    at_4gb, at_8gb = fig.axes
    assert [c.get_label() for c in bars(at_4gb)] == ["all_local"]
    assert texts(at_4gb).count(NO_DATA) == 1
    assert [c.get_label() for c in bars(at_8gb)] == ["all_local", "model_based"]
    assert [t.get_text() for t in at_8gb.get_xticklabels()] == ["sentence_pairing"]
    assert NO_DATA not in texts(at_8gb)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.drop(columns="ci95_high"), "ci95_high"),
    (lambda s: s.drop(columns=["app", "mean"]), "app, mean"),
])
def test_summary_plot_refuses_missing_columns(
        summary: pd.DataFrame, tmp_path: Path,
        change: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summary_plot(change(summary), "average_latency", tmp_path / "s.png")


def test_summary_plot_refuses_an_unknown_metric_or_format(summary: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'42nd_latency'.*average_latency"):
        summary_plot(summary, "42nd_latency", tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"s\.pdf.*\.png or \.svg"):
        summary_plot(summary, "average_latency", tmp_path / "s.pdf")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- speedup_plot


def expected_speedup(memory: int, policy: str, metric: str) -> list[float]:
    i = METRICS.index(metric)
    out = []
    for app in APPS:
        base, mine = MEANS[memory, app]["all_remote"][i], MEANS[memory, app][policy][i]
        out.append(mine / base if metric == "throughput" else base / mine)
    return out


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_speedup_plot_writes_the_file(summary: pd.DataFrame, tmp_path: Path,
                                      suffix: str) -> None:
    fig = speedup_plot(summary, "all_remote", tmp_path / f"speedup{suffix}")
    assert isinstance(fig, Figure)
    assert_written(tmp_path / f"speedup{suffix}")


def test_speedup_plot_rows_are_metrics_columns_grid_points_baseline_left_out(
        summary: pd.DataFrame, tmp_path: Path) -> None:
    fig = speedup_plot(summary, "all_remote", tmp_path / "s.png")
    assert len(fig.axes) == len(METRICS) * 2
    others = ["all_local", "model_based"]
    for k, ax in enumerate(fig.axes):
        metric, memory = METRICS[k // 2], (4096, 8192)[k % 2]
        containers = bars(ax)
        assert [c.get_label() for c in containers] == others
        for container, policy in zip(containers, others, strict=True):
            expected = finite(expected_speedup(memory, policy, metric))
            assert heights(container) == pytest.approx(expected)
        reference = [line for line in ax.get_lines() if list(line.get_ydata()) == [1.0, 1.0]]
        assert len(reference) == 1
    assert "all_remote" not in [t.get_text() for t in fig.legends[0].get_texts()
                                if t.get_text() in POLICIES]
    assert "throughput" in fig.axes[2].get_ylabel()
    assert "policy / baseline" in fig.axes[2].get_ylabel()
    assert "baseline / policy" in fig.axes[0].get_ylabel()


def test_speedup_plot_marks_missing_data(summary: pd.DataFrame, tmp_path: Path) -> None:
    fig = speedup_plot(summary, "all_remote", tmp_path / "s.png", metrics=["average_latency"])
    at_4gb, at_8gb = fig.axes
    assert texts(at_4gb).count(NO_DATA) == 1
    assert NO_DATA not in texts(at_8gb)


def test_speedup_plot_without_baseline_data_is_no_data(summary: pd.DataFrame,
                                                       tmp_path: Path) -> None:
    # Against all_local, flow_analysis at 4 GB has no baseline: every policy there is "no data".
    fig = speedup_plot(summary, "all_local", tmp_path / "s.png", metrics=["99th_latency"])
    assert texts(fig.axes[0]).count(f"all_local: {NO_DATA}") == 2


def test_speedup_plot_keeps_each_policy_colour_of_the_summary(summary: pd.DataFrame,
                                                              tmp_path: Path) -> None:
    def colours(fig: Figure) -> dict[str, tuple[float, ...]]:
        return {c.get_label(): c.patches[0].get_facecolor() for c in bars(fig.axes[0])}

    of_summary = colours(summary_plot(summary, "throughput", tmp_path / "a.png"))
    of_speedup = colours(speedup_plot(summary, "all_remote", tmp_path / "b.png"))
    assert of_speedup == {p: of_summary[p] for p in ("all_local", "model_based")}
    given = policy_colours(["model_based", "all_remote", "all_local"])
    fig = speedup_plot(summary, "all_remote", tmp_path / "c.png", colours=given)
    assert colours(fig)["model_based"][:3] == pytest.approx((0x1F / 255, 0x77 / 255,
                                                             0xB4 / 255))


def test_speedup_plot_refuses_bad_input(summary: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    with pytest.raises(ValueError, match=r"baseline 'evaluation'.*all_local, all_remote"):
        speedup_plot(summary, "evaluation", path)
    with pytest.raises(ValueError, match="'p42'"):
        speedup_plot(summary, "all_remote", path, metrics=["average_latency", "p42"])
    with pytest.raises(ValueError, match="non-empty"):
        speedup_plot(summary, "all_remote", path, metrics=[])
    with pytest.raises(ValueError, match="std"):
        speedup_plot(summary.drop(columns="std"), "all_remote", path)
    with pytest.raises(ValueError, match="only the baseline"):
        speedup_plot(summary[summary["policy"] == "all_remote"], "all_remote", path)


# ---------------------------------------------------------------------- timeline_plot


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """flow_analysis on a 4 GB node: all_local runs out of memory again and again;
    evaluation, starting with use_enc remote (a `scenario` decision, not a change), moves
    actions around; all_remote holds two replicas of each."""
    out = tmp_path_factory.mktemp("runs")
    flow = scenario_mod.load(LOADTEST).for_app("flow_analysis")
    use_enc_remote = dataclasses.replace(flow, placement={"use_enc": Placement.remote(1)})
    folders = {}
    for label, scenario, policy, params in [
            ("all_local", flow, "all_local", {}),
            ("evaluation", use_enc_remote, "evaluation", {}),
            ("all_remote", flow, "all_remote", {"replicas": 2})]:
        result = simulate(scenario, policy, params=params, duration_s=240, seed=1)
        folders[label] = result.save(out / label)
    return folders


def panel(fig: Figure, name: str) -> Axes:
    (ax,) = [ax for ax in fig.axes if ax.get_label() == name]
    return ax


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_timeline_plot_writes_the_file(runs: dict[str, Path], tmp_path: Path,
                                       suffix: str) -> None:
    fig = timeline_plot(runs, tmp_path / f"timeline{suffix}")
    assert isinstance(fig, Figure)
    assert_written(tmp_path / f"timeline{suffix}")


def test_timeline_plot_draws_a_latency_and_a_replica_line_per_run(runs: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    fig = timeline_plot(runs, tmp_path / "t.png", window_s=20)
    _, latency_labels = panel(fig, "latency").get_legend_handles_labels()
    assert [label.split(" (")[0] for label in latency_labels] == list(runs)
    assert "no walker succeeded" in latency_labels[0]
    handles, replica_labels = panel(fig, "replicas").get_legend_handles_labels()
    assert replica_labels == list(runs)
    timeline = pd.read_parquet(runs["all_remote"] / "timeline.parquet")
    ready = timeline.groupby("ts")["replicas_ready"].sum()
    (line,) = [h for h, label in zip(handles, replica_labels, strict=True)
               if label == "all_remote"]
    assert list(line.get_xdata()) == list(ready.index)
    assert list(line.get_ydata()) == list(ready)
    assert ready.max() == 6  # 3 actions x 2 replicas


def test_timeline_plot_windows_latency(runs: dict[str, Path], tmp_path: Path) -> None:
    fig = timeline_plot({"all_remote": runs["all_remote"]}, tmp_path / "t.png", window_s=30)
    (line,) = [h for h in panel(fig, "latency").get_legend_handles_labels()[0]]
    requests = pd.read_parquet(runs["all_remote"] / "requests.parquet")
    ok = requests[requests["ok"] & (requests["ts"] >= 90) & (requests["ts"] < 120)]
    x, y = list(line.get_xdata()), list(line.get_ydata())
    assert y[x.index(105.0)] == pytest.approx(ok["latency_ms"].mean())
    assert panel(fig, "latency").get_yscale() == "log"  # the 45 s cold start, then ~150 ms


def test_timeline_plot_marks_placement_changes_and_out_of_memory(runs: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    fig = timeline_plot(runs, tmp_path / "t.png")
    changes = panel(fig, "changes")
    decisions = pd.read_parquet(runs["evaluation"] / "decisions.parquet")
    assert decisions["source"].iloc[0] == "scenario"  # use_enc starts remote: not a change
    moved = decisions[(decisions["placement"] != "") & (decisions["source"] != "scenario")]
    markers = {line.get_color(): list(line.get_xdata()) for line in changes.get_lines()
               if line.get_marker() == "|"}
    colour = policy_colours(list(runs))["evaluation"]
    assert markers[colour] == sorted(set(moved["ts"]))
    assert markers[colour][0] > 0
    names = " ".join(texts(changes))
    assert "text_seg → local" in names and "tfm_ner → remote:1" in names
    assert "use_enc, text_seg, tfm_ner → remote:2" in names  # all_remote, at 0 s
    events = pd.read_parquet(runs["all_local"] / "events.parquet")
    ooms = events[events["kind"] == "out_of_memory"]
    assert len(ooms) >= 3
    latency = panel(fig, "latency")
    red = [line for line in latency.get_lines()
           if line.get_color() == OOM_COLOUR and line.get_linestyle() == ":"]
    assert sorted(line.get_xdata()[0] for line in red) == sorted(ooms["ts"])
    legend = [" ".join(t.get_text().split()) for t in fig.legends[0].get_texts()]
    assert f"out of memory (all_local: {len(ooms)})" in legend
    assert "warm-up (60 s)" in legend


def test_timeline_plot_refuses_bad_input(runs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    with pytest.raises(ValueError, match="runs is empty"):
        timeline_plot({}, path)
    with pytest.raises(ValueError, match=r"run 'gone'.*not a folder"):
        timeline_plot({"gone": tmp_path / "nowhere"}, path)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "requests.parquet").write_bytes((runs["all_local"] / "requests.parquet")
                                               .read_bytes())
    with pytest.raises(ValueError, match=r"run 'half'.*decisions\.parquet, timeline\.parquet"):
        timeline_plot({"half": partial}, path)
    with pytest.raises(ValueError, match="window_s"):
        timeline_plot(runs, path, window_s=0)
    assert not path.exists()
