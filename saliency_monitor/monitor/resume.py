"""What a checkpoint's monitor state contributes when a fit resumes, option by option.

A resumed fit continues the checkpoint's history: the same probes (re-read by identity with the
same seed), layers, task and meta step, so drift and every curve go on where they stopped. An
option the user gives explicitly at the resume (``SaliencyMonitor(meta_lr=0.05)``) that differs
from the one the checkpoint's monitor was configured with wins, with a warning saying which
history restarts: new probes (seed, probe counts) restart drift (from the last evaluation and
from the start) and the filmstrip for their split, another task restarts them everywhere, other
layers where they changed, another meta step makes the meta curves before and after
incomparable. Probes the data can no longer give (the dataset shrank) are redrawn with a warning.
Version-1 checkpoints record no options: theirs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import MonitorConfig
from .state import MonitorState
from .trainer import WarnOnce

if TYPE_CHECKING:
    import pytorch_lightning as pl

@dataclass
class Resumed:
    """The checkpoint's state (``restored``, empty for a fresh fit) read against this run's options."""

    config: MonitorConfig
    restored: dict[str, Any]
    trainer: pl.Trainer
    warn: WarnOnce

    @classmethod
    def of(cls, config: MonitorConfig, state: MonitorState, trainer: pl.Trainer, warn: WarnOnce) -> Resumed:
        return cls(config, state.restored or {}, trainer, warn)

    def overrides(self, name: str) -> bool:
        """``name`` was given explicitly and differs from the checkpoint's recorded option."""
        recorded = self.restored.get("options", {})
        return name in self.config.explicit and name in recorded and recorded[name] != getattr(self.config, name)

    def _changed(self, name: str, restarts: str) -> None:
        recorded = self.restored["options"][name]
        self.warn(self.trainer, f"resume-{name}", (
            f"SaliencyMonitor: resuming with {name}={getattr(self.config, name)!r}, the checkpoint's monitor used "
            f"{name}={recorded!r}; the option given wins: {restarts}."
        ))

    @property
    def seed(self) -> int:
        if "seed" not in self.restored or self.overrides("seed"):
            return self.config.seed
        return int(self.restored["seed"])

    def identities(self, split: str) -> list[int] | None:
        """The checkpoint's probe identities of ``split``, or None to draw new probes."""
        identities = self.restored.get("identities", {}).get(split)
        if identities is None:
            return None
        for name in ("seed", f"num_{split}_probes"):
            if self.overrides(name):
                self._changed(name, f"new {split} probes are drawn and their drift restarts (and filmstrip)")
                return None
        return list(identities)

    def unreadable(self, split: str, identities: list[int], error: Exception) -> None:
        self.warn(self.trainer, f"redraw-{split}", (
            f"SaliencyMonitor: the checkpoint's {split} probes (dataset items {identities}) cannot be read from "
            f"this run's {split} data ({error}); drawing new {split} probes, their drift restarts (and filmstrip)."
        ))

    def task(self, inferred: str) -> tuple[str, bool]:
        """(the task, whether drift must restart because the task changed)."""
        if self.overrides("task"):
            self._changed("task", "drift restarts (and the filmstrips; the label classes may have changed)")
            return str(self.config.task), True
        return self.config.task or self.restored.get("task") or inferred, False

    def layers(self) -> list[str] | None:
        """The layers to use when the config gives none: the checkpoint's (None on a fresh fit)."""
        layers = self.restored.get("layers")
        return None if layers is None else list(layers)

    def meta_lr(self) -> float | str | None:
        """The checkpoint's meta step (a number or None), else the config's ``meta_lr`` option."""
        if "meta_lr" not in self.restored:
            return self.config.meta_lr
        if self.overrides("meta_lr"):
            self._changed("meta_lr", "meta curves before and after this point use different steps")
            return self.config.meta_lr
        meta_lr = self.restored["meta_lr"]
        return None if meta_lr is None else float(meta_lr)
