"""The files of one head study's folder (``results/heads/<task>/``): written by
:mod:`headsteer.paper.head_study`, read by :mod:`headsteer.paper.figures`, named here once.

Only names live here, so the figures find a study's files without importing the fitter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The two Δ's a study fits: at the config's γ, λ and at γ = λ = 0.
VARIANTS = ("regularized", "unregularized")


@dataclass(frozen=True)
class StudyFiles:
    """The files of the head study in ``folder``."""

    folder: Path

    def intervention(self, variant: str) -> Path:
        """The saved Δ of ``variant`` (a path stem: ``Intervention.save``/``load`` add the suffixes)."""
        return self.folder / variant

    @property
    def heads(self) -> Path:
        """variant, task, layer, head, norm, share, rank, active: one row per (variant, head)."""
        return self.folder / "heads.csv"

    @property
    def path(self) -> Path:
        """task, layer, strength, head, norm, active, task_loss: the regularization path."""
        return self.folder / "path.csv"

    @property
    def fv_effects(self) -> Path:
        """task, layer, head, aie, rank: the function vector's ranking over every head."""
        return self.folder / "fv_effects.csv"
