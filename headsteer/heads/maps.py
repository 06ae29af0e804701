"""A model-wide head map for one task: which heads Δ uses at every layer, how stably, and what they do.

:func:`head_map` fits, on the training pairs only,

1. Δ at every layer at the chosen penalty γ = λ = s* (and without penalty), the fit
   ``hs.fit`` would give, all layers in one batch;
2. the gradient at Δ = 0 of every pair, every layer (one backward): each head's entry
   strength (:mod:`headsteer.heads.entry`), which sets the path's strongest strength
   λ_max (the largest entry strength of the whole training set) and tells the path
   which fits are exactly zero;
3. the λ path from λ_max down to s* for the whole training set (sample 0) and for B
   resamples (samples 1..B, :mod:`headsteer.heads.resample`), by warm-started
   continuation (:mod:`headsteer.heads.path`), all (sample, layer) fits of one
   strength in one batch; then stability selection (:mod:`headsteer.heads.stability`);
4. the function vector's average indirect effect of every head, on the training pairs
   and (``resample_fv``) on each resample;

and scores on the held-out pairs only (reported, never used to choose anything)
each layer's Δ, Δ without each head and each head alone (:mod:`headsteer.heads.causal`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

import pandas as pd
import torch

from headsteer.baselines.function_vectors import FVConfig, fit_function_vector
from headsteer.config import FitConfig
from headsteer.errors import ConfigError
from headsteer.fitting.loop import FitJob, FitResult, fit_many
from headsteer.heads.causal import head_ablations
from headsteer.heads.entry import entry_strengths, pair_gradients, strength_grid
from headsteer.heads.path import PathSpec, continuation_path
from headsteer.heads.resample import RESAMPLINGS, ResamplingName, resample_pairs
from headsteer.heads.stability import HeadSet, Stability, fv_agreement, stability_selection, top_heads
from headsteer.hooks import head_label
from headsteer.intervention import Intervention
from headsteer.prompts import Template
from headsteer.tasks import Pair


@dataclass(frozen=True)
class MapConfig:
    """How a head map is made; every default is argued in RESEARCH.md ("Which heads").

    Attributes:
        fit: the chosen fit: γ = λ = s* (> 0, equal: the path's convention), loss,
            optimizer (a proximal one: selection needs exact zeros), steps, lr; its
            ``seed`` seeds the resamples and the function vectors' prompts, and its
            ``layer`` is ignored (``layers`` says where).
        layers: the layers mapped; None maps every layer.
        resamples: B, the number of resamples of the training pairs.
        resampling: ``halves`` (complementary halves, the default) or ``bootstrap``.
        threshold: π_thr, the selection frequency a stable head reaches.
        expected_false: E_V, the bound on falsely stable heads that sets q_max.
        path_points: strengths on the path above s*, log-spaced from λ_max.
        strengths: an explicit path (strictly falling, > s*; s* is appended) instead.
        path_steps, path_lr: the steps and step size of each warm-started path segment.
        fv_top_k: how many of the function vector's top heads are compared with Δ's.
        resample_fv: also rank heads by the function vector on every resample.
        unregularized_layer: also fit Δ without penalty at this layer, when mapped (the
            paper's Figure 2 sets it beside Δ at s*); None: nowhere. One layer, not all:
            it is a picture of what the penalty does, and every fit costs (RESEARCH.md).
    """

    fit: FitConfig = field(default_factory=FitConfig)
    layers: tuple[int, ...] | None = None
    resamples: int = 10
    resampling: ResamplingName = "halves"
    threshold: float = 0.75
    expected_false: float = 1.0
    path_points: int = 8
    strengths: tuple[float, ...] | None = None
    path_steps: int = 5
    path_lr: float = 0.05
    fv_top_k: int = 10
    resample_fv: bool = True
    unregularized_layer: int | None = 4

    def __post_init__(self) -> None:
        fit = self.fit
        if fit.gamma != fit.lam or not fit.gamma > 0:
            raise ConfigError(f"a head map needs γ = λ > 0 (its path is in γ = λ), got γ={fit.gamma}, λ={fit.lam}")
        if fit.optimizer == "adam":
            raise ConfigError("a head map needs exact zeros to count selections: use optimizer prox_adam or fista")
        if self.unregularized_layer is not None and (
            not isinstance(self.unregularized_layer, int) or self.unregularized_layer < 0
        ):
            raise ConfigError(f"unregularized_layer must be None or a layer index, got {self.unregularized_layer!r}")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise ConfigError(f"layers must be None (every layer) or distinct layers, got {self.layers!r}")
        if self.resampling not in RESAMPLINGS:
            raise ConfigError(f"resampling must be one of {RESAMPLINGS}, got {self.resampling!r}")
        if not isinstance(self.resamples, int) or self.resamples < 2:
            raise ConfigError(f"resamples must be an int >= 2, got {self.resamples!r}")
        if self.resampling == "halves" and self.resamples % 2:
            raise ConfigError(f"complementary halves come in pairs: resamples must be even, got {self.resamples}")
        if not 0.5 < self.threshold <= 1:
            raise ConfigError(f"threshold must be in (0.5, 1], got {self.threshold!r}")
        if not (math.isfinite(self.expected_false) and self.expected_false > 0):
            raise ConfigError(f"expected_false must be a finite number > 0, got {self.expected_false!r}")
        for name in ("path_points", "path_steps", "fv_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if not (math.isfinite(self.path_lr) and self.path_lr > 0):
            raise ConfigError(f"path_lr must be a finite number > 0, got {self.path_lr!r}")
        if self.strengths is not None:
            s = self.strengths
            if not s or any(b >= a for a, b in pairwise(s)) or s[-1] <= fit.gamma:
                raise ConfigError(f"strengths must fall strictly and stay above the chosen {fit.gamma}, got {s!r}")

    @property
    def chosen(self) -> float:
        """s*, the chosen penalty strength (γ = λ)."""
        return self.fit.gamma


@dataclass(frozen=True)
class HeadMap:
    """One task's head map (see :func:`head_map`).

    ``heads``: one row per (layer, head) — norm (‖Δ_h‖₂ at s*), share (of its layer's
    ‖Δ‖²), active, norm_unregularized (NaN but at ``unregularized_layer``), entry_strength, switch_on (the largest path
    strength where the whole training set's path selects it; NaN: never), the held-out
    ablations (loss/accuracy without it and alone, necessity, sufficiency), fv_aie,
    fv_rank (among the mapped heads), fv_top, frequency_chosen, frequency_max, stable.
    ``layers``: one row per layer — held-out loss and accuracy with Δ and zero-shot,
    active heads, final training loss. ``path``: sample, strength, layer, head, norm,
    task_loss (sample 0: every training pair; 1..B: the resamples). ``entry``: sample,
    layer, head, entry_strength. ``fv_effects``: sample, layer, head, aie, rank.
    ``fv_overlap``: per sample, Δ's heads selected in the stability region against the
    function vector's top heads. ``timings``: seconds per stage.
    """

    task: str
    config: MapConfig
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]
    heads: pd.DataFrame
    layers: pd.DataFrame
    path: pd.DataFrame
    entry: pd.DataFrame
    fv_effects: pd.DataFrame
    fv_overlap: pd.DataFrame
    stability: Stability
    regularized: tuple[Intervention, ...]  # one per mapped layer
    unregularized: tuple[Intervention, ...]  # at ``unregularized_layer``, if mapped
    timings: dict[str, float]

    @property
    def stable(self) -> HeadSet:
        """The stable heads, (layer, head)."""
        return self.stability.stable

    @property
    def fv_top(self) -> HeadSet:
        """The function vector's top ``fv_top_k`` heads among the mapped ones, on every training pair."""
        return top_heads(self.fv_effects[self.fv_effects["sample"] == 0], self.config.fv_top_k)

    def summary(self) -> pd.DataFrame:
        """The map in a few lines: what is stable, how it was chosen, and how it meets the function vector."""
        s, over = self.stability, self.fv_overlap[self.fv_overlap["sample"] > 0]
        best = self.layers.sort_values("accuracy", ascending=False).iloc[0]
        items = {
            "task": self.task,
            "heads mapped": f"{s.n_heads} ({len(self.layers)} layers)",
            "stable heads": ", ".join(s.stable_labels()) or "none",
            "threshold, E_V, q_max": f"{s.threshold:g}, {s.expected_false:g}, {s.q_max:.2f}",
            "stability region (γ = λ)": f"{s.region[0]:.3g} … {s.region[-1]:.3g}" if s.region else "empty",
            "bound on false stable heads": f"{s.error_bound:.2f}",
            f"FV top {self.config.fv_top_k}": ", ".join(head_label(*h) for h in sorted(self.fv_top)),
            "stable ∩ FV top": ", ".join(head_label(*h) for h in sorted(self.stable & self.fv_top)) or "none",
            "Jaccard(Δ, FV) over resamples": f"{over['jaccard'].mean():.2f} ± {over['jaccard'].std(ddof=1):.2f} "
            f"(shared {over['shared'].mean():.1f}, chance {over['chance_shared'].mean():.1f})",
            "best held-out layer": f"L{int(best['layer'])}: first-token {best['accuracy']:.2f} "
            f"(zero-shot {best['accuracy_zero_shot']:.2f})",
            "time": f"{sum(self.timings.values()):.0f} s",
        }
        return pd.DataFrame({"item": list(items), "value": list(items.values())})


def head_map(
    model,
    train: Sequence[Pair],
    test: Sequence[Pair],
    template: Template,
    config: MapConfig = MapConfig(),
    task: str = "",
    progress: bool = True,
) -> HeadMap:
    """Map which heads Δ uses for a task across the model; see the module docstring.

    ``train`` is all that is fitted on or chosen from; ``test`` (held-out pairs, no
    input shared with ``train``) is only scored.
    """
    train, test = tuple(train), tuple(test)
    leaked = {p.input for p in train} & {p.input for p in test}
    if leaked:
        raise ConfigError(f"held-out pairs share inputs with the training pairs: {sorted(leaked)[:5]}")
    layers = list(config.layers) if config.layers is not None else list(range(model.cfg.n_layers))
    fit, timings = config.fit, {}
    samples = map_samples(train, config)

    clock = time.perf_counter()
    standard = [replace(fit, layer=layer) for layer in layers]
    if config.unregularized_layer in layers:
        standard.append(replace(fit, layer=config.unregularized_layer, gamma=0.0, lam=0.0))
    fits = fit_many(model, [FitJob(train, c, task) for c in standard], template, progress=progress)
    regularized, unregularized = fits[: len(layers)], fits[len(layers) :]
    timings["fits at s* (all layers)"] = time.perf_counter() - clock

    clock = time.perf_counter()
    grads, losses = pair_gradients(model, train, template, layers, fit.loss)
    row = {p: i for i, p in enumerate(train)}
    members = [torch.tensor([row[p] for p in sample]) for sample in samples]
    entry = torch.stack([entry_strengths(grads[m].mean(0)) for m in members])  # [samples, layers, heads]
    zero_loss = torch.stack([losses[m].mean() for m in members])
    timings["gradients at zero"] = time.perf_counter() - clock

    clock = time.perf_counter()
    grid = (*config.strengths, config.chosen) if config.strengths else None
    grid = grid or strength_grid(float(entry[0].max()), config.chosen, config.path_points)
    spec = PathSpec(fit, config.path_steps, config.path_lr)
    path = continuation_path(model, samples, template, layers, grid, entry, zero_loss, spec, task, progress)
    timings["λ path (all samples)"] = time.perf_counter() - clock

    clock = time.perf_counter()
    per_layer, per_head = head_ablations(model, test, template, [r.intervention for r in regularized])
    timings["held-out ablations"] = time.perf_counter() - clock

    clock = time.perf_counter()
    fv_samples = samples if config.resample_fv else samples[:1]
    fv_config = FVConfig(top_k=config.fv_top_k, seed=fit.seed)
    effects = []
    for k, sample in enumerate(fv_samples):
        _, table = fit_function_vector(model, list(sample), template, fv_config, task)
        table = table[table["layer"].isin(layers)].reset_index(drop=True)  # ranked among the mapped heads
        effects.append(table.assign(sample=k, rank=range(1, len(table) + 1)))
    fv_effects = pd.concat(effects, ignore_index=True)[["sample", "layer", "head", "aie", "rank"]]
    timings["function vectors"] = time.perf_counter() - clock

    stability = stability_selection(path, config.chosen, config.threshold, config.expected_false)
    overlap = fv_agreement(path, stability.region, fv_effects, config.fv_top_k)
    entry_table = _entry_table(entry, layers)
    heads = _heads_table(
        task, layers, regularized, unregularized, entry_table, path, per_head, fv_effects, config, stability
    )
    layer_table = per_layer.assign(
        task=task,
        active_heads=[len(r.intervention.active_heads()) for r in regularized],
        train_loss=[float(r.history["task_loss"].iloc[-1]) for r in regularized],
        n_test=len(test),
    )
    return HeadMap(
        task,
        config,
        train,
        test,
        heads,
        layer_table[["task", *per_layer.columns, "active_heads", "train_loss", "n_test"]],
        path,
        entry_table,
        fv_effects,
        overlap,
        stability,
        tuple(r.intervention for r in regularized),
        tuple(r.intervention for r in unregularized),
        timings,
    )


def map_samples(train: Sequence[Pair], config: MapConfig) -> list[tuple[Pair, ...]]:
    """Sample 0, every training pair, then the B resamples (seeded by ``config.fit.seed``); checked for the FV."""
    samples = [tuple(train), *resample_pairs(train, config.resampling, config.resamples, config.fit.seed)]
    if config.resample_fv and min(len(set(s)) for s in samples) < 3:
        raise ConfigError(
            f"function vectors need 3 distinct pairs per resample; {config.resampling} of {len(train)} training "
            "pairs give fewer: use more training pairs, or turn resample_fv off (--no-resample-fv)"
        )
    return samples


def _entry_table(entry: torch.Tensor, layers: Sequence[int]) -> pd.DataFrame:
    n_samples, _, n_heads = entry.shape
    return pd.DataFrame(
        [
            {"sample": r, "layer": layer, "head": h, "entry_strength": float(entry[r, i, h])}
            for r in range(n_samples)
            for i, layer in enumerate(layers)
            for h in range(n_heads)
        ]
    )


def _heads_table(
    task: str,
    layers: Sequence[int],
    regularized: Sequence[FitResult],
    unregularized: Sequence[FitResult],
    entry: pd.DataFrame,
    path: pd.DataFrame,
    ablations: pd.DataFrame,
    fv_effects: pd.DataFrame,
    config: MapConfig,
    stability: Stability,
) -> pd.DataFrame:
    """Join everything known per (layer, head) into the map's one table."""
    rows = []
    for i, result in enumerate(regularized):
        norms = result.intervention.head_norms().tolist()
        free = [math.nan] * len(norms)
        for other in unregularized:  # at most one layer has a Δ without penalty
            if other.intervention.layer == layers[i]:
                free = other.intervention.head_norms().tolist()
        total = sum(n * n for n in norms) or 1.0
        rows += [
            {
                "task": task,
                "layer": layers[i],
                "head": h,
                "label": head_label(layers[i], h),
                "norm": n,
                "share": n * n / total,
                "active": n > 0,
                "norm_unregularized": free[h],
            }
            for h, n in enumerate(norms)
        ]
    heads = pd.DataFrame(rows)
    full_entry = entry[entry["sample"] == 0].drop(columns="sample")
    full_path = path[(path["sample"] == 0) & (path["norm"] > 0)]
    switch_on = full_path.groupby(["layer", "head"], as_index=False)["strength"].max()
    fv = fv_effects[fv_effects["sample"] == 0].drop(columns="sample")
    fv = fv.rename(columns={"aie": "fv_aie", "rank": "fv_rank"})
    fv["fv_top"] = fv["fv_rank"] <= config.fv_top_k
    for table in (full_entry, switch_on.rename(columns={"strength": "switch_on"}), ablations, fv, stability.heads):
        heads = heads.merge(table, how="left", on=["layer", "head"])
    return heads
