"""What `jsorc-sim calibrate` makes: the calibrated scenario with a note per fitted value, the
fits, and how it is written (jsorc_sim.calibrate builds it)."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.scenario import Scenario
from jsorc_sim.toml_notes import render_toml


@dataclass(frozen=True)
class Note:
    """Where one value of the scenario came from."""

    value: Any
    source: str
    n: int = 0
    fit: str = ""
    gof: str = ""
    calibrated: bool = True

    def comment(self) -> str:
        head = "" if self.calibrated else "NOT CALIBRATED: "
        parts = [head + self.source]
        if self.n:
            parts.append(f"n={self.n}")
        parts += [p for p in (self.fit, self.gof) if p]
        return "; ".join(parts)


@dataclass(frozen=True)
class ActionFit:
    """One action's service-time fit at one placement (a row of the CLI's table)."""

    action: str
    placement: str
    n: int
    family: str
    mean_ms: float
    cv: float
    ks_p: float
    reason: str


@dataclass(frozen=True)
class CalibratedScenario:
    """The fitted scenario (`scenario`, a TOML-ready table), where each value came from
    (`notes`, by dotted field path), the service fits, and the samples of empirical
    distributions (by their path relative to the scenario file)."""

    scenario: dict[str, Any]
    notes: Mapping[str, Note]
    fits: tuple[ActionFit, ...]
    samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    folders: tuple[str, ...] = ()

    def scenario_toml(self) -> str:
        """The scenario as TOML with each note as a comment beside its value; it parses back
        to `scenario` (checked)."""
        header = ["Calibrated by `jsorc-sim calibrate` from " + ", ".join(self.folders),
                  "beside each value: its source and fit quality; NOT CALIBRATED marks a value "
                  "kept from --base or a default"]
        text = render_toml(self.scenario, {p: n.comment() for p, n in self.notes.items()},
                           header)
        if tomllib.loads(text) != self.scenario:
            raise AssertionError("calibrate: the annotated TOML does not parse back to the "
                                 "scenario")  # a bug in render_toml, never bad input
        return text

    def write(self, path: str | Path) -> Scenario:
        """Write the sample files and the scenario beside them; return it loaded back.

        The scenario goes to a temporary name, is loaded back by the scenario loader, and
        only then replaces `path`: a file that would not load is never left there."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for relative, values in self.samples.items():
            target = path.parent / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(f"{v!r}\n" for v in values))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.scenario_toml())
            loaded = scenario_mod.load(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return loaded  # from the same folder: its relative paths resolve as from `path`

    def table(self) -> str:
        """The service fits as a table a person reads."""
        header = ("action", "placement", "n", "family", "mean ms", "cv", "KS p")
        rows = [header] + [(f.action, f.placement, str(f.n), f.family, _num(f.mean_ms),
                            _num(f.cv, 3), _num(f.ks_p, 3)) for f in self.fits]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if j < 2 or j == 3 else c.rjust(w)
                           for j, (c, w) in enumerate(zip(row, widths, strict=True)))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _num(value: float, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


__all__ = ["ActionFit", "CalibratedScenario", "Note"]
