"""Training checkpoints: ``DIR/step_000123.pt``, written atomically, the newest few kept.

They live outside a stage's declared outputs, so a killed job resumes from the last
one. Each holds the model state dict (routers' ``e_score_correction_bias`` included),
the optimizer state, the step and the telemetry so far.

Snapshots (``DIR/snapshots/step_000123/``, Hugging Face model folders) are the model at
intermediate steps, all kept, for router saturation over training (OLMoE Eq. 5); they
sit here too so that a killed run keeps the ones it had, and the stage moves them into
its outputs at the end.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from moebalance.atomic import atomic_path

_NAME = re.compile(r"^step_(\d+)\.pt$")


class Checkpoints:
    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        self.directory, self.keep = Path(directory), keep

    def _all(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        found = self._all()
        return found[-1][1] if found else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.directory / f"step_{step:06d}.pt"
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        for _, old in self._all()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    @property
    def snapshot_dir(self) -> Path:
        return self.directory / "snapshots"

    def save_snapshot(self, step: int, model) -> Path:
        path = self.snapshot_dir / f"step_{step:06d}"
        with atomic_path(path, directory=True) as tmp:
            model.save_pretrained(tmp)
        return path

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=False)
