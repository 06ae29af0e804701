"""The files of one task's head map (``results/heads/<task>/``): written by
:mod:`headsteer.paper.head_study`, read by :mod:`headsteer.paper.figures`, named here once.

Only names live here, so the figures find a map's files without importing the fitter.
Every table has a ``seed`` column (one training split per seed)::

    heads.csv        one row per (seed, layer, head): HeadMap.heads
    layers.csv       one row per (seed, layer): held-out loss/accuracy with Δ and zero-shot
    path.csv         seed, sample, strength, layer, head, norm, task_loss (sample 0: all training pairs)
    entry.csv        seed, sample, layer, head, entry_strength
    fv_effects.csv   seed, sample, layer, head, aie, rank
    fv_overlap.csv   seed, sample, n_delta, n_fv, shared, jaccard, chance_shared
    stability.json   the settings, and per seed the stability selection, the FV's top heads, timings
    interventions/seed<S>/layer<L>_regularized.{json,safetensors}   Δ at s* (and one layer's _unregularized)

``stability.json`` is written last: a folder without it is not a finished map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The Δ's a map fits: at the chosen γ = λ at every layer, and at γ = λ = 0 at one.
VARIANTS = ("regularized", "unregularized")
TABLES = ("heads", "layers", "path", "entry", "fv_effects", "fv_overlap")


@dataclass(frozen=True)
class StudyFiles:
    """The files of the head map in ``folder``."""

    folder: Path

    def table(self, name: str) -> Path:
        """One of :data:`TABLES` as ``<name>.csv``."""
        if name not in TABLES:
            raise ValueError(f"unknown head-map table {name!r}; known: {TABLES}")
        return self.folder / f"{name}.csv"

    @property
    def stability(self) -> Path:
        """Settings and per-seed stability selection; written last, so it marks a finished map."""
        return self.folder / "stability.json"

    def intervention(self, seed: int, layer: int, variant: str) -> Path:
        """The saved Δ of ``variant`` at ``layer`` for ``seed`` (a stem: ``Intervention.save`` adds suffixes)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
        return self.folder / "interventions" / f"seed{seed}" / f"layer{layer:02d}_{variant}"

    def is_complete(self) -> bool:
        return self.stability.is_file()
