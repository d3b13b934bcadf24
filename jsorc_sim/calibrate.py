"""Calibration: a scenario fitted to live runs (`jsorc loadtest --out DIR` folders).

    jsorc-sim calibrate DIR [DIR ...] --out SCENARIO.toml [--base SCENARIO.toml]

A folder holds `calls.parquet` (the simulator's `calls` columns), `requests.parquet` (the
client's view: ts, app, latency_ms, ok, error; `request_id` when present), `report.json` and
`run.json` (format "jsorc-run/1", written by `jsorc_live/run_record.py`). Of `run.json` this
reads (a missing or null required key is an error naming the key and the folder):

    app, duration_s, machine {cores, memory_mb}                             required
    mode ("closed" | "trace"), clients, think_ms, trace (a path), trace_format, time_scale
    placements    action -> "local" | "remote:N" | "unloaded", at the start
                  (else placements_at_start)
    policy        null | {name, params, interval_s}: the policy in force at the start
                  (else policy_at_start {name, params, automation, interval_s})
    changes       [{ts, action, placement, previous, ...}]: placement decisions while the
                  load ran (else decisions, skipping rows with an error)
    actions       action -> {local_memory_mb, remote_memory_mb, replica_cores, ...}

`requests.parquet`'s `request_id` and `server_ms` (the server's latency of the walker run)
join each request to its calls; without them, client latencies are compared as means.

What is fitted, and from what (each value's source and fit quality go into `notes` and, as a
comment, beside the value in the TOML):

- service times: per action and placement, lognormal or gamma by MLE, else empirical
  (`jsorc_sim.fit`); the scenario's one `service` is the placement with more samples and
  `local_slowdown` the ratio of the local to the remote mean;
- node cores: local service times stretch with the number of local calls in service (threads
  share the cores); the fitted c (`fit.fit_cores`) becomes `node.cores` and local samples are
  divided by max(1, k / c), since the simulator queues calls for a core instead. Remote
  replicas run on the same machine but the simulator gives them cores of their own: their
  service times are kept as measured, under the run's contention, and the notes say so;
- network: `rtt_ms` is the smallest per-action mean `network_ms` of remote calls; an action
  whose mean is larger gets the excess as `payload_kb` (an equivalent size at the scenario's
  bandwidth, not a measured one);
- load and start-up times: the median wait of cold calls, else the time from a placement
  change to the first call served in the new mode (an upper bound);
- memory and replica cores: the action configs in run.json;
- compute_ms: the server's walker latency minus the latency of its calls, per request; the
  client's HTTP round trip (client latency - server latency) is not in the simulator's
  runtime, so it is added to `think_ms`, where a closed-loop client spends it too;
- one machine (every run.json `server` on loopback: replicas and load generator beside the
  runtime): `node.replicas_share_cores = true`; the round trip of the 1-client runs becomes
  `workload.client_cpu_ms` (CPU on a node core, so it grows with clients as the cores fill)
  instead of think time; `node.runtime_cores` is the 4- over 1-client throughput of the
  all-local runs, rounded (the GIL), and local samples are then divided by
  max(1, k / runtime_cores) instead of by the fitted cores.

Too few samples (< fit.MIN_SAMPLES) keep the value of `--base` (else a default named in the
note) and mark it not calibrated.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from jsorc_sim import fit
from jsorc_sim import scenario as scenario_mod
from jsorc_sim.calibrated import ActionFit, CalibratedScenario, Note
from jsorc_sim.live_runs import CalibrationError, Run, check_same_actions, read_run
from jsorc_sim.scenario import ActionSpec, Scenario
from policies import Placement, PlacementError

T = TypeVar("T")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEFAULT_SERVICE_MS = 10.0  # without --base and without samples: Dist's own default mean


# ----------------------------------------------------------------------------- calibrate


def calibrate(folders: Sequence[Path], *, base: Path | None = None) -> CalibratedScenario:
    """Fit a scenario to the loadtest folders (see the module's docstring); `base`, a
    scenario whose values are kept where the runs are too few to fit them."""
    if not folders:
        raise CalibrationError("calibrate needs at least one loadtest folder")
    runs = [read_run(f) for f in folders]
    check_same_actions(runs)
    base_scenario = scenario_mod.load(base) if base is not None else None
    builder = _Builder(runs, base_scenario)
    return builder.build()


class _Builder:
    """Collects the scenario table and its notes; one method per part of the scenario."""

    def __init__(self, runs: list[Run], base: Scenario | None) -> None:
        self.runs = runs
        self.first = runs[0]
        self.base = base
        self.notes: dict[str, Note] = {}
        self.fits: list[ActionFit] = []
        self.samples: dict[str, tuple[float, ...]] = {}
        self.runtime_limit: int | None = None  # node.runtime_cores when fitted (one machine)
        self.name = "calibrated_" + re.sub(r"[^A-Za-z0-9_.-]+", "_",
                                           self.first.folder.resolve().name)
        self.calls = pd.concat([_with_concurrency(r.calls).assign(run=i)
                                for i, r in enumerate(runs)], ignore_index=True)
        self.actions = sorted(self.first.actions)

    def note(self, path: str, value: T, source: str, **kw: Any) -> T:
        self.notes[path] = Note(value, source, **kw)
        return value

    def base_action(self, name: str) -> ActionSpec | None:
        return self.base.actions.get(name) if self.base is not None else None

    def build(self) -> CalibratedScenario:
        cores = self.node_cores()
        # One machine: the runtime's own parallelism, which local samples are corrected by.
        self.runtime_limit = self.runtime_cores(self.core_count(cores)) \
            if self.one_machine() else None
        network = self.network()
        actions = {a: self.action(a, cores, network) for a in self.actions}
        apps = self.apps()
        duration = float(self.first.need("duration_s"))
        table: dict[str, Any] = {
            "name": self.name, "seed": 0, "duration_s": duration, "warmup_s": 0.0,
            "timeline_s": 10.0, "node": self.node(cores), "network": network["table"],
            "actions": actions, "apps": apps, "workload": self.workload(apps),
            "placement": self.placement(), "policy": self.policy(),
        }
        self.note("duration_s", duration, f"run.json duration_s of {self.first.folder}")
        return CalibratedScenario(_rounded(table), dict(self.notes), tuple(self.fits),
                                  dict(self.samples), tuple(str(r.folder) for r in self.runs))

    # ------------------------------------------------------------------ node

    def node_cores(self) -> fit.CoresFit:
        """Effective cores from the local calls of every run."""
        local = _ok(self.calls, "local")
        return fit.fit_cores(local["action"].to_numpy(str), local["k"].to_numpy(float),
                             local["service_ms"].to_numpy(float))

    def core_count(self, cores: fit.CoresFit) -> int:
        """node.cores: the fitted effective cores, else the machine's (see `node`)."""
        if cores.identified and cores.cores is not None:
            return cores.cores
        return max(int(self.first.need("machine")["cores"]), cores.max_concurrency)

    def node(self, cores: fit.CoresFit) -> dict[str, Any]:
        machine = self.first.need("machine")
        base_node = self.base.node if self.base is not None else scenario_mod.NodeSpec()
        if cores.identified and cores.cores is not None:
            count = cores.cores
            self.note("node.cores", count, "fitted effective cores", n=cores.n, fit=cores.reason,
                      gof="local samples divided by max(1, k/cores); the simulator queues for "
                      "a core where the live threads shared it; remote replicas share these "
                      "cores live but not in the simulator (their service is as measured)")
        else:
            count = max(int(machine["cores"]), cores.max_concurrency)
            self.note("node.cores", count, "run.json machine.cores, raised to the most local "
                      "calls seen in service at once", n=cores.n, fit=cores.reason,
                      gof="remote replicas share the machine's cores live, not in the "
                      "simulator: their service times are as measured under the run's load",
                      calibrated=False)
        memory = float(machine["memory_mb"])
        self.note("node.memory_mb", memory, f"run.json machine.memory_mb of {self.first.folder}")
        self.note("node.runtime_memory_mb", base_node.runtime_memory_mb,
                  "--base" if self.base is not None else "scenario default", calibrated=False)
        self.note("node.restart_s", base_node.restart_s,
                  "--base" if self.base is not None else "scenario default", calibrated=False)
        table: dict[str, Any] = {"cores": count, "memory_mb": memory,
                                 "runtime_memory_mb": base_node.runtime_memory_mb,
                                 "restart_s": base_node.restart_s}
        if self.one_machine():
            table["replicas_share_cores"] = self.note(
                "node.replicas_share_cores", True, "run.json server on loopback: the replicas, "
                "the runtime and the load generator share this machine's cores")
            if self.runtime_limit is not None:
                table["runtime_cores"] = self.runtime_limit
        return table

    def one_machine(self) -> bool:
        """Every run's server on loopback: replicas and load generator on the runtime's
        machine (jsorc_live starts replicas as local processes)."""
        hosts = {urlsplit(str(r.info.get("server") or "")).hostname for r in self.runs}
        return bool(hosts) and hosts <= LOOPBACK

    def runtime_cores(self, cores: int) -> int | None:
        """The runtime's effective parallelism: throughput with the most clients over
        throughput with one, of the all-local runs (the runtime's own work only), rounded
        and kept within 1..cores; None without such a pair of runs."""
        by_clients: dict[int, list[float]] = {}
        for run in self.runs:
            placements = run.info.get("placements") or {}
            clients = run.info.get("clients")
            if not isinstance(placements, Mapping) or not isinstance(clients, int) \
                    or not placements or run.info.get("changes") \
                    or any(_mode(p) != "local" for p in placements.values()):
                continue
            ok = int(run.requests["ok"].sum())
            by_clients.setdefault(clients, []).append(ok / float(run.need("duration_s")))
        if 1 not in by_clients or max(by_clients) <= 1:
            self.note("node.runtime_cores", cores, "needs all-local runs with 1 client and "
                      "with more: kept cores", calibrated=False)
            return None
        most = max(by_clients)
        one, many = float(np.mean(by_clients[1])), float(np.mean(by_clients[most]))
        speedup = many / one
        value = int(min(max(round(speedup), 1), cores))
        self.note("node.runtime_cores", value, f"throughput of all-local runs with {most} "
                  f"clients / with 1, rounded, within 1..{cores}",
                  n=len(by_clients[1]) + len(by_clients[most]),
                  fit=f"{many:.1f} / {one:.1f} per s = {speedup:.3f}",
                  gof="one Python process (the GIL): its walker and local-call work scales "
                  "this far")
        return value

    # ------------------------------------------------------------------ network

    def network(self) -> dict[str, Any]:
        remote = _ok(self.calls, "remote")
        remote = remote[np.isfinite(remote["network_ms"].to_numpy(float))]
        base_net = self.base.network if self.base is not None else scenario_mod.NetworkSpec()
        bandwidth = base_net.bandwidth_mbps
        means = remote.groupby("action")["network_ms"].agg(["mean", "count"])
        means = means[means["count"] >= 1]
        table = {"rtt_ms": base_net.rtt_ms, "bandwidth_mbps": bandwidth}
        payload: dict[str, float] = {}
        if means.empty or int(means["count"].sum()) < fit.MIN_SAMPLES:
            self.note("network.rtt_ms", base_net.rtt_ms, f"{len(remote)} remote calls with a "
                      "network time; kept " + ("--base" if self.base else "the default"),
                      n=len(remote), calibrated=False)
        else:
            rtt = float(means["mean"].min())
            table["rtt_ms"] = rtt
            lo, hi = fit.mean_ci(remote.loc[remote["action"] == means["mean"].idxmin(),
                                            "network_ms"].to_numpy(float))
            self.note("network.rtt_ms", rtt, "smallest per-action mean network_ms of remote "
                      f"calls ({means['mean'].idxmin()})", n=int(means["count"].sum()),
                      fit=f"95 % CI {lo:.3f}..{hi:.3f} ms",
                      gof="simulated as a constant per call")
            payload = {a: float((m - rtt) * bandwidth / 8.0) for a, m in means["mean"].items()}
        self.note("network.bandwidth_mbps", bandwidth, "--base" if self.base else "default",
                  calibrated=False)
        return {"table": table, "payload_kb": payload,
                "n": {a: int(c) for a, c in means["count"].items()}}

    # ------------------------------------------------------------------ actions

    def action(self, name: str, cores: fit.CoresFit, network: dict[str, Any]) -> dict[str, Any]:
        base = self.base_action(name)
        here = f"actions.{name}"
        local = _ok(self.calls, "local", name)
        remote = _ok(self.calls, "remote", name)
        local_ms = self._local_samples(local, cores)
        remote_ms = remote["service_ms"].to_numpy(float)
        remote_ms = remote_ms[np.isfinite(remote_ms)]
        fits = {p: self._fit(name, p, x) for p, x in (("local", local_ms), ("remote", remote_ms))}
        out: dict[str, Any] = {}
        slowdown = base.local_slowdown if base is not None else 1.0
        if fits["local"] and fits["remote"]:
            slowdown = float(local_ms.mean() / remote_ms.mean())
            self.note(f"{here}.local_slowdown", slowdown, "mean local / mean remote service",
                      n=len(local_ms) + len(remote_ms),
                      fit=f"{local_ms.mean():.3f} / {remote_ms.mean():.3f} ms")
        else:
            self.note(f"{here}.local_slowdown", slowdown, "needs both placements fitted; kept "
                      + ("--base" if base else "1.0"), calibrated=False)
        out["service"] = self._service(name, fits, local_ms, remote_ms, slowdown, base)
        out["local_slowdown"] = slowdown
        out.update(self._config(name, base))
        out.update(self._startup(name, base))
        kb = network["payload_kb"].get(name)
        if kb is not None:
            out["payload_kb"] = max(kb, 0.0)
            self.note(f"{here}.payload_kb", out["payload_kb"], "(mean network_ms - rtt_ms) x "
                      "bandwidth / 8: the excess network time as an equivalent payload",
                      n=network["n"][name])
        else:
            out["payload_kb"] = base.payload_kb if base is not None else 0.0
            self.note(f"{here}.payload_kb", out["payload_kb"], "no remote calls; kept "
                      + ("--base" if base else "0"), calibrated=False)
        return out

    def _local_samples(self, local: pd.DataFrame, cores: fit.CoresFit) -> np.ndarray:
        x = local["service_ms"].to_numpy(float)
        limit = self.runtime_limit
        if limit is not None and limit < self.core_count(cores):
            # The simulator queues local calls for `runtime_cores` slots: live, the threads
            # shared them, so k calls in service each took max(1, k / runtime_cores) longer.
            shared: np.ndarray = x / fit.contention_factor(local["k"].to_numpy(float), limit)
            return shared
        if cores.identified:
            x = x / fit.contention_factor(local["k"].to_numpy(float), cores.cores)
        return x

    def _fit(self, action: str, placement: str, x: np.ndarray) -> fit.ServiceFit | None:
        if x.size < fit.MIN_SAMPLES:
            self.fits.append(ActionFit(action, placement, int(x.size), "not calibrated",
                                       float(x.mean()) if x.size else math.nan, math.nan,
                                       math.nan, f"fewer than {fit.MIN_SAMPLES} calls"))
            return None
        try:
            result = fit.fit_service(x, f"{action} {placement}")
        except fit.FitError as exc:
            folders = ", ".join(str(r.folder) for r in self.runs)
            raise CalibrationError(f"{folders}: service_ms of {exc}") from None
        self.fits.append(ActionFit(action, placement, result.n, result.family, result.mean_ms,
                                   result.cv, result.ks_p, result.reason))
        return result

    def _service(self, name: str, fits: Mapping[str, fit.ServiceFit | None],
                 local_ms: np.ndarray, remote_ms: np.ndarray, slowdown: float,
                 base: ActionSpec | None) -> dict[str, Any]:
        path = f"actions.{name}.service"
        fitted = {p: f for p, f in fits.items() if f is not None}
        if not fitted:
            n = len(local_ms) + len(remote_ms)
            if base is not None:
                service = _dist_table(base.service)
                source = "kept --base"
            else:
                seen = np.concatenate([local_ms, remote_ms])
                mean = float(seen.mean()) if seen.size and seen.mean() > 0 else DEFAULT_SERVICE_MS
                service = {"dist": "exp", "mean_ms": mean}
                source = "default exp of the few samples' mean (10 ms if none)"
            return self.note(path, service, f"fewer than {fit.MIN_SAMPLES} calls at either "
                             f"placement; {source}", n=n, calibrated=False)
        # The placement with more samples shapes the distribution; the simulator multiplies
        # local calls by local_slowdown, so local samples are divided by it.
        placement = max(fitted, key=lambda p: fitted[p].n)
        chosen = fitted[placement]
        scale = slowdown if placement == "local" else 1.0
        samples = local_ms if placement == "local" else remote_ms
        scaled = f"{placement} samples" + (f" / local_slowdown {scale:.4g}" if scale != 1 else "")
        if chosen.family == "empirical":
            relative = f"{self.name}.samples/{name}.txt"
            self.samples[relative] = tuple(float(v) for v in samples / scale)
            return self.note(path, {"dist": "empirical", "file": relative},
                             f"empirical: {scaled}, written to {relative}", n=chosen.n,
                             fit=f"mean {chosen.mean_ms:.3f} ms, cv {chosen.cv:.3f}",
                             gof=chosen.reason)
        service = {"dist": chosen.family, "mean_ms": chosen.mean_ms / scale, "cv": chosen.cv}
        return self.note(path, service, f"MLE (floc=0) of {scaled}", n=chosen.n,
                         fit=f"{chosen.family} mean {chosen.mean_ms:.3f} ms cv {chosen.cv:.3f}",
                         gof=chosen.reason)

    def _config(self, name: str, base: ActionSpec | None) -> dict[str, Any]:
        """Memory, replica cores and default mode from run.json's action config."""
        configs = self.first.info.get("actions") or {}
        config = configs.get(name) if isinstance(configs, Mapping) else None
        config = config if isinstance(config, Mapping) else {}
        here = f"actions.{name}"
        src = f"run.json actions.{name}"
        default = base if base is not None else ActionSpec(name=name, service=scenario_mod.Dist())
        out: dict[str, Any] = {}
        for key, aliases, value in (
                ("local_memory_mb", ("local_memory_mb",), default.local_memory_mb),
                ("remote_memory_mb", ("replica_memory_used_mb", "remote_memory_mb"),
                 default.replica_memory_mb),
                ("remote_cores", ("replica_cores", "remote_cores"), default.remote_cores),
                ("default_mode", ("default_mode",), default.default_mode)):
            given = next((a for a in aliases if config.get(a) is not None), None)
            cold = self.calls[(self.calls["action"] == name) & self.calls["cold"]
                              & self.calls["ok"]]["placement"]
            if given is None and key == "default_mode" and len(cold):
                # run.json keeps no default mode, but a cold start shows it.
                out[key] = self.note(f"{here}.{key}", str(cold.iloc[0]),
                                     "the placement of its first cold-start call", n=len(cold))
                continue
            if given is None:
                out[key] = value
                self.note(f"{here}.{key}", value, f"not in {src}; kept "
                          + ("--base" if base else "the default"), calibrated=False)
                continue
            raw = config[given]
            out[key] = str(raw) if key == "default_mode" else \
                int(raw) if key == "remote_cores" else float(raw)
            self.note(f"{here}.{key}", out[key], f"{src}.{given}")
        return out

    def _startup(self, name: str, base: ActionSpec | None) -> dict[str, Any]:
        """local_load_s and remote_start_s: cold calls' waits, else placement changes."""
        out: dict[str, Any] = {}
        for key, mode in (("local_load_s", "local"), ("remote_start_s", "remote")):
            cold = self.calls[(self.calls["action"] == name) & self.calls["cold"]
                              & self.calls["ok"] & (self.calls["placement"] == mode)]
            path = f"actions.{name}.{key}"
            if len(cold):
                waits = cold["wait_ms"].to_numpy(float) / 1000.0
                out[key] = float(np.median(waits))
                self.note(path, out[key], f"median wait of {mode} cold-start calls", n=len(cold),
                          fit=f"range {waits.min():.3f}..{waits.max():.3f} s")
                continue
            bounds = self._change_delays(name, mode)
            if bounds:
                out[key] = float(np.median(bounds))
                self.note(path, out[key], f"run.json changes to {mode}: time to the first call "
                          "served there (an upper bound)", n=len(bounds))
                continue
            out[key] = getattr(base, key) if base is not None else 0.0
            self.note(path, out[key], f"no {mode} cold start or change; kept "
                      + ("--base" if base else "0"), calibrated=False)
        return out

    def _change_delays(self, name: str, mode: str) -> list[float]:
        """Per decision that moved `name` to `mode`: the time to its first call served there."""
        delays = []
        for run in self.runs:
            decisions = run.info.get("changes", run.info.get("decisions")) or []
            served = run.calls[(run.calls["action"] == name) & run.calls["ok"]
                               & (run.calls["placement"] == mode)]["ts"].to_numpy(float)
            for row in decisions if isinstance(decisions, list) else []:
                if not isinstance(row, Mapping) or row.get("action") != name or row.get("error"):
                    continue
                ts = row.get("ts")
                if _mode(row.get("placement")) != mode or _mode(row.get("previous")) == mode \
                        or not isinstance(ts, int | float):
                    continue
                after = served[served >= float(ts)]
                if after.size:
                    delays.append(float(after.min() - float(ts)))
        return delays

    def apps(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for app in sorted(set(self.calls["app"])):
            calls = self.calls[self.calls["app"] == app].sort_values(["run", "request_id", "ts"])
            by_request = calls.groupby(["run", "request_id"], sort=False)
            complete = by_request["ok"].all()
            sequences = by_request["action"].agg(tuple)
            pool = sequences[complete] if complete.any() else sequences
            sequence, count = Counter(pool).most_common(1)[0]
            self.note(f"apps.{app}.calls", list(sequence), "the most common call sequence of "
                      "its requests in calls.parquet", n=int(count),
                      fit=f"{count} of {len(pool)} requests")
            out[app] = {"calls": list(sequence), "compute_ms": self.compute_ms(app, by_request,
                                                                                complete)}
        return out

    def compute_ms(self, app: str, by_request: Any, complete: pd.Series) -> float:
        """The server's latency of a request minus its calls' latency, joined by request_id
        (a requests table without request_id: the difference of the means)."""
        path = f"apps.{app}.compute_ms"
        call_sum = by_request["latency_ms"].sum()[complete]
        diffs, means = [], []
        for i, run in enumerate(self.runs):
            req = run.requests[(run.requests["app"] == app) & run.requests["ok"]]
            mine = call_sum[call_sum.index.get_level_values(0) == i]
            mine.index = mine.index.get_level_values(1)
            server = _server_ms(req)
            if "request_id" in req.columns and (req["request_id"] >= 0).any():
                joined = server.groupby(req["request_id"]).first().reindex(mine.index).dropna()
                diffs.append((joined - mine.loc[joined.index]).to_numpy(float))
            elif len(req) and len(mine):
                means.append((float(server.mean() - mine.mean()), len(req)))
        per_request = np.concatenate(diffs) if diffs else np.empty(0)
        n = per_request.size + sum(c for _, c in means)
        base_app = self.base.apps.get(app) if self.base is not None else None
        if n < fit.MIN_SAMPLES:
            value = base_app.compute_ms if base_app is not None else 0.0
            return self.note(path, value, f"{n} requests matched to their calls; kept "
                             + ("--base" if base_app else "0"), n=n, calibrated=False)
        value = max((float(per_request.sum()) + sum(m * c for m, c in means)) / n, 0.0)
        lo, hi = fit.mean_ci(per_request)
        how = "per request (request_id)" if not means else "as a difference of means (no " \
              "request_id)"
        return self.note(path, value, f"server latency - sum of its calls' latency, {how}",
                         n=n, fit=f"95 % CI {lo:.3f}..{hi:.3f} ms" if per_request.size > 1
                         else "")

    def client_hop_ms(self, runs: Sequence[Run] | None = None) -> tuple[float, int]:
        """Mean client latency minus server latency of the same walker runs (0 without
        `server_ms`): the HTTP round trip a closed-loop client spends outside the runtime."""
        hops = []
        for run in self.runs if runs is None else runs:
            req = run.requests[run.requests["ok"]]
            if "server_ms" in req.columns:
                hop = (req["latency_ms"] - req["server_ms"]).to_numpy(float)
                hops.append(hop[np.isfinite(hop)])
        values = np.concatenate(hops) if hops else np.empty(0)
        return (float(values.mean()), int(values.size)) if values.size else (0.0, 0)

    def workload(self, apps: Mapping[str, Any]) -> dict[str, Any]:
        info = self.first.info
        src = f"run.json of {self.first.folder}"
        mix = {a: 1.0 for a in self.first.apps() if a in apps} or {a: 1.0 for a in apps}
        self.note("workload.mix", mix, f"the app(s) of {src}")
        trace = info.get("trace")
        if info.get("mode") == "trace" or trace:
            # The loadtest's own trace when it names one, else its calls (trace_format calls:
            # one arrival per request, at its first call).
            spec: Mapping[str, Any] = trace if isinstance(trace, Mapping) else \
                {"file": trace, "format": info.get("trace_format"),
                 "time_scale": info.get("time_scale")}
            file = spec.get("file")
            path = Path(str(file)) if file else self.first.folder / "calls.parquet"
            if not path.is_absolute():
                path = self.first.folder / path
            table = {"kind": "trace", "trace": str(path.resolve()),
                     "trace_format": str(spec.get("format") or "auto") if file else "calls",
                     "time_scale": float(spec.get("time_scale") or 1.0) if file else 1.0,
                     "mix": mix}
            self.note("workload.trace", table["trace"], f"{src} (trace replay)")
            return table
        clients = info.get("clients")
        think = float(info.get("think_ms") or 0.0)
        if self.one_machine():
            return self.shared_workload(int(clients or 1), think, mix)
        hop, n = self.client_hop_ms()
        self.note("workload.clients", int(clients or 1), src if clients else
                  f"no clients in {src}: 1", calibrated=bool(clients))
        self.note("workload.think_ms", think + hop, f"{src} think_ms {think:g} + the client's "
                  f"HTTP round trip {hop:.3f} ms (client latency - server_ms)", n=n,
                  calibrated=n > 0)
        return {"kind": "closed", "clients": int(clients or 1), "think_ms": think + hop,
                "mix": mix}

    def shared_workload(self, clients: int, think: float,
                        mix: Mapping[str, float]) -> dict[str, Any]:
        """One machine: the client's round trip is the load generator's and the HTTP hop's
        CPU on the node's cores. Its uncontended size is that of the 1-client runs (with more
        clients the hop grows by waiting for a core, which the simulator adds itself)."""
        src = f"run.json of {self.first.folder}"
        single = [r for r in self.runs if r.info.get("clients") == 1]
        hop, n = self.client_hop_ms(single or self.runs)
        which = "1-client runs" if single else "all runs (no 1-client run: an upper bound)"
        self.note("workload.clients", clients, src)
        self.note("workload.think_ms", think, f"{src} think_ms")
        self.note("workload.client_cpu_ms", hop, f"the client's HTTP round trip (client "
                  f"latency - server_ms) of the {which}, all taken as CPU on a node core",
                  n=n, calibrated=n > 0 and bool(single))
        return {"kind": "closed", "clients": clients, "think_ms": think,
                "client_cpu_ms": hop, "mix": dict(mix)}

    def placement(self) -> dict[str, str]:
        info = self.first.info
        key = "placements" if "placements" in info else "placements_at_start"
        given = info.get(key) or {}
        if not isinstance(given, Mapping):
            raise CalibrationError(f"{self.first.folder}: run.json {key} must be an object of "
                                   f"action -> placement, got {given!r}")
        out = {}
        for action, entry in given.items():
            if action not in self.actions:
                continue  # configured but never called: the scenario has no such action
            try:
                placement = Placement.parse(str(entry))
            except PlacementError as exc:
                raise CalibrationError(f"{self.first.folder}: run.json {key}.{action}: "
                                       f"{exc}") from None
            out[action] = self.note(f"placement.{action}", str(placement), f"run.json {key}")
        return out

    def policy(self) -> dict[str, Any]:
        info = self.first.info
        key = "policy" if "policy" in info else "policy_at_start"
        given = info.get(key)
        name = given.get("name") if isinstance(given, Mapping) else None
        if not isinstance(given, Mapping) or name in (None, "", "none") \
                or given.get("automation") is False:
            # automation off: the controller applied nothing, whatever policy was set.
            self.note("policy.name", "none", f"no policy in force at the start (run.json {key})")
            return {"name": "none"}
        table: dict[str, Any] = {"name": str(name), "params": dict(given.get("params") or {})}
        if isinstance(given.get("interval_s"), int | float):
            table["interval_s"] = float(given["interval_s"])
        self.note("policy.name", table["name"], f"run.json {key}")
        return table


def _ok(calls: pd.DataFrame, placement: str, action: str | None = None) -> pd.DataFrame:
    """Successful calls at `placement` (of `action`) with a finite service time."""
    mask = calls["ok"] & (calls["placement"] == placement)
    if action is not None:
        mask &= calls["action"] == action
    out = calls[mask]
    finite: pd.DataFrame = out[np.isfinite(out["service_ms"].to_numpy(float))]
    return finite


def _with_concurrency(calls: pd.DataFrame) -> pd.DataFrame:
    """`calls` with `k`: for a local call, the local calls in service at its midpoint (in
    its own run: each run has its own clock); NaN for the others."""
    local = _ok(calls, "local")
    start = local["ts"].to_numpy(float) + local["wait_ms"].to_numpy(float) / 1000.0
    end = start + local["service_ms"].to_numpy(float) / 1000.0
    k = pd.Series(np.nan, index=calls.index)
    k.loc[local.index] = fit.concurrency(start, end).astype(float)
    return calls.assign(k=k)


def _rounded(value: Any) -> Any:
    """Floats to 7 significant digits, far below any measurement's precision, so that the
    file reads 3.0 rather than 2.999999999995013."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.7g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _server_ms(requests: pd.DataFrame) -> pd.Series:
    """The server's latency of each request where known, else the client's."""
    client: pd.Series = requests["latency_ms"].astype(float)
    if "server_ms" not in requests.columns:
        return client
    server: pd.Series = requests["server_ms"].astype(float)
    return server.where(np.isfinite(server), client)


def _mode(value: Any) -> str:
    text = str(value or "")
    return text.split(":")[0] if text else ""


def _dist_table(dist: scenario_mod.Dist) -> dict[str, Any]:
    table: dict[str, Any] = {"dist": dist.dist}
    if dist.dist == "empirical":
        table["file"] = dist.file
        if dist.column:
            table["column"] = dist.column
    else:
        table["mean_ms"] = dist.mean_ms
        if dist.dist in ("lognormal", "gamma"):
            table["cv"] = dist.cv
    return table


__all__ = ["ActionFit", "CalibratedScenario", "CalibrationError", "Note", "calibrate"]
