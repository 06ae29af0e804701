"""The λ path of many (sample, layer) fits at once, by warm-started continuation.

For strengths s₁ > s₂ > … > s_K (γ = λ = s), every (sample, layer) fit at s_j starts
from its own solution at s_{j−1} and takes ``steps`` proximal steps (glmnet's warm
starts): far fewer than a fit from zero, and the heads switch on in the order the
penalty lets them. All fits at one strength are one batch (``fit_many``), so the
path costs K batches, not K × samples × layers fits.

A (sample, layer) fit is run only from the first strength below its layer's largest
entry strength (:mod:`headsteer.heads.entry`): above it the fit from zero is exactly
zero at every step, so its row is written as zeros, with the loss at Δ = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import pandas as pd
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from headsteer.config import FitConfig
from headsteer.fitting.loop import FitJob, fit_many
from headsteer.prompts import Template
from headsteer.tasks import Pair

PATH_COLUMNS = ["sample", "strength", "layer", "head", "norm", "task_loss"]


@dataclass(frozen=True)
class PathSpec:
    """How each path segment is fitted: ``steps`` steps of ``base``'s optimizer at step size ``lr``."""

    base: FitConfig
    steps: int
    lr: float


def continuation_path(
    model,
    samples: Sequence[Sequence[Pair]],
    template: Template,
    layers: Sequence[int],
    strengths: Sequence[float],
    entry: Float[Tensor, "samples layers n_heads"],
    zero_loss: Float[Tensor, " samples"],
    spec: PathSpec,
    task: str = "",
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (sample, strength, layer, head): ‖Δ_h‖₂ and the fit's final training task loss.

    ``entry[r, i]`` holds the entry strengths of layer ``layers[i]``'s heads on sample r
    and ``zero_loss[r]`` sample r's task loss at Δ = 0 (both from :mod:`headsteer.heads.entry`).
    ``strengths`` must fall strictly.
    """
    if any(b >= a for a, b in pairwise(strengths)):
        raise ValueError(f"the path's strengths must fall strictly, got {list(strengths)}")
    n_heads = model.cfg.n_heads
    opens_below = entry.amax(-1)  # [samples, layers]: above this strength the fit stays at zero
    state: dict[tuple[int, int], Tensor] = {}
    rows = []
    cells_at = [
        [(r, i) for i in range(len(layers)) for r in range(len(samples)) if opens_below[r, i] > s] for s in strengths
    ]
    # The bar counts fits, not strengths: a segment low on the path fits many more cells than one at the top.
    total = sum(len(cells) for cells in cells_at)
    bar = tqdm(total=total, desc=f"λ path {task}".strip(), unit="fit", disable=not progress, leave=False)
    for s, cells in zip(strengths, cells_at):
        config = replace(spec.base, gamma=s, lam=s, steps=spec.steps, lr=spec.lr)
        jobs = [FitJob(tuple(samples[r]), replace(config, layer=layers[i]), task, state.get((r, i))) for r, i in cells]
        results = fit_many(model, jobs, template, progress=False) if jobs else []
        losses = {}
        for cell, result in zip(cells, results):  # jobs run layer by layer: chunks stop their backward early
            state[cell] = result.intervention.delta
            losses[cell] = float(result.history["task_loss"].iloc[-1])
        for r in range(len(samples)):
            for i, layer in enumerate(layers):
                norms = state[(r, i)].norm(dim=-1).tolist() if (r, i) in state else [0.0] * n_heads
                loss = losses.get((r, i), float(zero_loss[r]))
                rows += [(r, s, layer, h, norms[h], loss) for h in range(n_heads)]
        bar.update(len(cells))
    bar.close()
    return pd.DataFrame(rows, columns=PATH_COLUMNS)
