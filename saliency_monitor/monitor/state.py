"""What a monitor remembers across evaluations, and what of it a checkpoint keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .evaluation import DriftReference, EvaluationPlan, LabelMaps
from .filmstrip import Filmstrip
from .probes import ProbeBatch
from .publish import Pictures

STATE_VERSION = 2
"""2 adds ``options`` (the options the run was configured with), then ``start`` and ``filmstrips``
(read when present); version 1 is still read."""
RESUMED_OPTIONS = ("layers", "task", "meta_lr", "num_train_probes", "num_val_probes", "seed")
"""The options a checkpoint records: an explicit option that differs from its record wins at a resume."""


@dataclass
class MonitorState:
    """The probes, the plan settled at fit start, drift references and counters."""

    probes: dict[str, ProbeBatch] = field(default_factory=dict)
    identities: dict[str, list[int]] = field(default_factory=dict)
    """Per split, the probes' identities (dataset indices, or positions in a stream)."""
    previous: dict[str, DriftReference] = field(default_factory=dict)
    """Per split, the last evaluation's label maps (what drift compares against)."""
    start: dict[str, DriftReference] = field(default_factory=dict)
    """Per split, the label maps of its first evaluation in the fit (what drift_from_start compares
    against; :func:`~.evaluation.start_reference`)."""
    filmstrips: dict[str, Filmstrip] = field(default_factory=dict)
    """Per split, the filmstrip's kept columns (rank 0 only: it draws the pictures)."""
    plan: EvaluationPlan | None = None
    class_names: list[str] | None = None
    evaluations: int = 0
    last_step: int = -1
    """The global step of the last evaluation (or fault)."""
    errors: int = 0
    restored: dict[str, Any] | None = None
    """The checkpoint's state, read at fit start (probe identities, layers, task, meta step)."""
    last_pictures: Pictures = field(default_factory=dict)
    last_filmstrips: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    largest_gap: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Per method, the largest combined-map gap of the fit and its step (the run summary's
    ``..._max``; kept in the checkpoint, so a resume goes on from it)."""

    def forget(self, split: str | None = None) -> None:
        """Restart the history of ``split`` (every split: None): drift and drift_from_start
        references, filmstrip. For new probes, or a task whose label classes may differ."""
        for history in (self.previous, self.start, self.filmstrips):
            if split is None:
                history.clear()
            else:
                history.pop(split, None)

    def class_name(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def state_dict(self, options: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint keeps; ``options`` are the monitor's :data:`RESUMED_OPTIONS`."""
        plan = self.plan
        return {
            "version": STATE_VERSION,
            "options": {name: options[name] for name in RESUMED_OPTIONS},
            "seed": options["seed"],
            "identities": {split: list(ids) for split, ids in self.identities.items()},
            "layers": list(plan.layers) if plan else None,
            "task": plan.task if plan else None,
            "meta_lr": plan.meta_lr if plan else None,
            "evaluations": self.evaluations,
            "last_step": self.last_step,
            "errors": self.errors,
            "previous": _references(self.previous),
            "start": _references(self.start),
            "filmstrips": {split: strip.state_dict() for split, strip in self.filmstrips.items()},
            "largest_gap": {method: [value, step] for method, (value, step) in self.largest_gap.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(
                f"Expected a SaliencyMonitor state of version 1 or {STATE_VERSION}, but got {state.get('version')!r}."
            )
        self.restored = {"options": {"seed": state["seed"]}, **state}
        self.evaluations = int(state["evaluations"])
        self.last_step = int(state["last_step"])
        self.errors = int(state["errors"])
        self.previous = _read_references(state["previous"])
        self.start = _read_references(state.get("start", {}))  # absent: restarts at the next evaluation
        self.filmstrips = {split: Filmstrip.from_state_dict(s) for split, s in state.get("filmstrips", {}).items()}
        self.largest_gap = {method: (float(v), int(s)) for method, (v, s) in state.get("largest_gap", {}).items()}


def _references(references: dict[str, DriftReference]) -> dict[str, dict[str, Any]]:
    return {split: {"maps": ref.maps, "targets": ref.targets} for split, ref in references.items()}


def _read_references(saved: dict[str, dict[str, Any]]) -> dict[str, DriftReference]:
    return {split: DriftReference(LabelMaps(ref["maps"]), ref["targets"]) for split, ref in saved.items()}
