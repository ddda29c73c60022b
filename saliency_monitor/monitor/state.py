"""What a monitor remembers across evaluations, and what of it a checkpoint keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .evaluation import DriftReference, EvaluationPlan, LabelMaps
from .probes import ProbeBatch
from .publish import Pictures

STATE_VERSION = 2
"""2 adds ``options`` (the options the run was configured with); version 1 is still read."""
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
    plan: EvaluationPlan | None = None
    class_names: list[str] | None = None
    evaluations: int = 0
    last_step: int = -1
    """The global step of the last evaluation (or fault)."""
    errors: int = 0
    restored: dict[str, Any] | None = None
    """The checkpoint's state, read at fit start (probe identities, layers, task, meta step)."""
    last_pictures: Pictures = field(default_factory=dict)

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
            "previous": {split: {"maps": ref.maps, "targets": ref.targets} for split, ref in self.previous.items()},
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
        self.previous = {
            split: DriftReference(LabelMaps(ref["maps"]), ref["targets"]) for split, ref in state["previous"].items()
        }
