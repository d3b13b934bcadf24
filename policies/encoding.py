"""A fixed-size numeric encoding of an `Observation`, and of placements as integer actions:
what a learned policy (jsorc_sim.gym_env, policies.learned) reads and writes.

    encoding = Encoding(("text_seg", "use_enc"), max_replicas=8)
    x = encoding.encode(observation)            # float32, shape (encoding.observation_size,)
    encoding.decode([0, 3])                     # {"text_seg": local, "use_enc": remote:3}
    encoding.encode_placements({...})           # the inverse: int64 [0, 3]

Pure: numpy only, no I/O, no clock.

The observation vector, per action in `actions` order (`ACTION_FEATURES`), then the node
(`NODE_FEATURES`) and the totals (`TOTAL_FEATURES`); `feature_names` lists them all. Every
entry is finite and within [-BOUND, BOUND]: a statistic with no sample (NaN) reads 0 beside a
0/1 "known" flag, so "no data" is never mistaken for "fast"; heavy-tailed values (latency,
queue lengths, ages) are squashed with log1p, so a stuck queue reads ~14 rather than 1e6
and a network's inputs keep a useful scale. An action the observation does not list (not
loaded yet, or a world that does not know it) encodes as zeros, one-hot included.

The action: one integer per action in [0, max_replicas]; 0 is local, k >= 1 remote with k
replicas (`action_nvec`, Gymnasium's MultiDiscrete). `unloaded` is not an action: an agent
places, it does not evict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from policies.contract import ActionStats, Mode, Observation, Placement

BOUND = 1e3  # every encoded entry lies within [-BOUND, BOUND]

ACTION_FEATURES = (
    "unloaded", "local", "remote",  # where calls go now (one-hot)
    "desired_replicas",  # of the placement last asked for, / max_replicas (0 unless remote)
    "ready_replicas",  # / max_replicas
    "transition",  # 1 while placement and desired differ
    "call_rate",  # calls issued per second over the window, / rate_scale
    "latency",  # log1p(mean call latency ms / latency_scale_ms); 0 when unknown
    "latency_known",  # 1 when a call finished in the window
    "in_flight",  # log1p(count)
    "queued",  # log1p(count)
    "oldest_call_age",  # log1p(seconds)
    "remote_utilisation",  # 0..1; 0 when unknown
    "remote_utilisation_known",  # 1 when a replica was ready in the window
    "local_memory",  # local copy's MB / node memory
)
NODE_FEATURES = ("node_memory_used", "node_cpu_utilisation", "node_runtime_up")
TOTAL_FEATURES = ("totals_latency", "totals_latency_known")
_MODES = (Mode.UNLOADED, Mode.LOCAL, Mode.REMOTE)


@dataclass(frozen=True)
class Encoding:
    """How observations and placements of `actions` become arrays (see the module).

    `max_replicas` bounds the replicas an action may ask for (and scales replica counts);
    `latency_scale_ms` and `rate_scale` are the latency and call rate that read log1p(1) and
    1.0."""

    actions: tuple[str, ...]
    max_replicas: int = 8
    latency_scale_ms: float = 1000.0
    rate_scale: float = 10.0

    def __post_init__(self) -> None:
        actions: object = self.actions  # whatever was passed, checked here
        if isinstance(actions, str) or not isinstance(actions, Sequence):
            raise ValueError(f"Encoding.actions must be a sequence of action names, "
                             f"got {actions!r}")
        actions = tuple(actions)
        if not actions:
            raise ValueError("Encoding.actions must name at least one action, got ()")
        for name in actions:
            if not isinstance(name, str) or not name:
                raise ValueError(f"Encoding.actions: an action name must be a non-empty str, "
                                 f"got {name!r}")
        twice = sorted({a for a in actions if actions.count(a) > 1})
        if twice:
            raise ValueError(f"Encoding.actions names {twice[0]!r} more than once")
        object.__setattr__(self, "actions", actions)
        replicas = self.max_replicas
        if isinstance(replicas, bool) or not isinstance(replicas, int | np.integer) \
                or replicas < 1:
            raise ValueError(f"Encoding.max_replicas must be an int >= 1, got {replicas!r}")
        object.__setattr__(self, "max_replicas", int(replicas))
        for field in ("latency_scale_ms", "rate_scale"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Encoding.{field} must be a finite number > 0, got {value!r}")
            object.__setattr__(self, field, float(value))

    # ------------------------------------------------------------------ observations

    @property
    def observation_size(self) -> int:
        return len(self.actions) * len(ACTION_FEATURES) + len(NODE_FEATURES) \
            + len(TOTAL_FEATURES)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """A name per entry of `encode`'s vector: `action.feature`, then node and totals."""
        per_action = tuple(f"{a}.{f}" for a in self.actions for f in ACTION_FEATURES)
        return per_action + NODE_FEATURES + TOTAL_FEATURES

    def encode(self, observation: Observation) -> np.ndarray:
        """The observation as a float32 vector of `observation_size` (see the module)."""
        memory_mb = float(observation.node.memory_total_mb)
        rows = [self._action(observation.actions.get(name), memory_mb) for name in self.actions]
        node = observation.node
        rows.append([_ratio(node.memory_used_mb, memory_mb), _known(node.cpu_utilisation)[0],
                     float(bool(node.runtime_up))])
        rows.append(list(_known(self._latency(observation.totals.mean_ms))))
        vector = np.concatenate([np.asarray(row, dtype=np.float64) for row in rows])
        # Belt and braces: a world may hand over inf (a live reading); never NaN, never huge.
        vector = np.nan_to_num(vector, nan=0.0, posinf=BOUND, neginf=-BOUND)
        encoded: np.ndarray = np.clip(vector, -BOUND, BOUND).astype(np.float32)
        return encoded

    def _action(self, stats: ActionStats | None, memory_mb: float) -> list[float]:
        if stats is None:
            return [0.0] * len(ACTION_FEATURES)
        mode = Mode(stats.placement.mode)
        onehot = [float(mode is m) for m in _MODES]
        desired = stats.desired.replicas if stats.desired.mode is Mode.REMOTE else 0
        latency, latency_known = _known(self._latency(stats.latency.mean_ms))
        utilisation, utilisation_known = _known(stats.remote_utilisation)
        return [
            *onehot,
            desired / self.max_replicas,
            stats.replicas_ready / self.max_replicas,
            float(bool(stats.transition)),
            _finite(stats.call_rate) / self.rate_scale,
            latency, latency_known,
            _log1p(stats.in_flight),
            _log1p(stats.queued),
            _log1p(stats.oldest_call_age_s),
            utilisation, utilisation_known,
            _ratio(stats.local_memory_mb, memory_mb),
        ]

    def _latency(self, ms: float) -> float:
        return _log1p(ms / self.latency_scale_ms) if math.isfinite(ms) else math.nan

    # ------------------------------------------------------------------ actions

    @property
    def action_nvec(self) -> tuple[int, ...]:
        """Choices per action (Gymnasium's MultiDiscrete nvec): local, remote:1..max."""
        return (self.max_replicas + 1,) * len(self.actions)

    def decode(self, action: Sequence[int] | np.ndarray) -> dict[str, Placement]:
        """Action -> placement for one integer per action (0 local, k remote:k).

        ValueError names the bad entry: a wrong length, a non-integer or a value outside
        [0, max_replicas]."""
        values = np.asarray(action)
        if values.ndim != 1 or len(values) != len(self.actions):
            raise ValueError(f"an action must hold {len(self.actions)} integers (one per "
                             f"action: {', '.join(self.actions)}), got shape {values.shape}")
        placements: dict[str, Placement] = {}
        for name, value in zip(self.actions, values.tolist(), strict=True):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not float(value).is_integer():
                raise ValueError(f"action entry for {name!r} must be an integer, got {value!r}")
            count = int(value)
            if not 0 <= count <= self.max_replicas:
                raise ValueError(f"action entry for {name!r} must be in 0..{self.max_replicas} "
                                 f"(0 local, k remote:k), got {count}")
            placements[name] = Placement.remote(count) if count else Placement.local()
        return placements

    def encode_placements(self, placements: Mapping[str, Placement]) -> np.ndarray:
        """The inverse of `decode`: an int64 array, one entry per action. ValueError names an
        action that is missing, unloaded or has more than max_replicas replicas."""
        out = np.zeros(len(self.actions), dtype=np.int64)
        for i, name in enumerate(self.actions):
            placement = placements.get(name)
            if placement is None:
                raise ValueError(f"no placement for action {name!r} (actions: "
                                 f"{', '.join(self.actions)})")
            if placement.mode is Mode.UNLOADED:
                raise ValueError(f"placement of {name!r} is unloaded, which no action encodes "
                                 "(0 local, k remote:k)")
            if placement.replicas > self.max_replicas:
                raise ValueError(f"placement of {name!r} is {placement}, above max_replicas "
                                 f"{self.max_replicas}")
            out[i] = placement.replicas
        return out


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _known(value: float) -> tuple[float, float]:
    """(value, 1.0), or (0.0, 0.0) when it has no sample (NaN)."""
    value = float(value)
    return (value, 1.0) if not math.isnan(value) else (0.0, 0.0)


def _log1p(value: float) -> float:
    value = float(value)
    return math.log1p(max(value, 0.0)) if math.isfinite(value) else \
        (BOUND if value > 0 else 0.0)


def _ratio(part: float, whole: float) -> float:
    return float(part) / whole if whole > 0 else 0.0
