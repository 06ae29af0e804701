"""Each head's causal share on held-out pairs: its layer's Δ without it, and it alone.

For the Δ fitted at layer ℓ and a head h, on the held-out pairs (never a training input):

    without_h = Δ with Δ_h := 0        alone_h = Δ with every Δ_{h'≠h} := 0

scored by the first-token NLL L (mean over pairs) and first-token accuracy (the argmax
next token is the answer's first token). With L₀ the loss without any Δ and L_Δ with
the whole Δ, the head's shares of the layer's held-out gain are

    necessity_h   = (L(without_h) − L_Δ) / (L₀ − L_Δ)     (lost when h is removed)
    sufficiency_h = (L₀ − L(alone_h)) / (L₀ − L_Δ)        (kept by h alone)

(undefined, NaN, where Δ does not lower the held-out loss). Every variant of every
layer is one row of one batch (:class:`~headsteer.steering.RowDeltas`): each held-out
prompt's prefix runs once, and each variant costs its last token through the model
and one pass over the unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headsteer.fitting.forward import build_prefix, run_suffix
from headsteer.fitting.loop import frozen
from headsteer.fitting.unembed import FinalHidden
from headsteer.intervention import Intervention
from headsteer.prompts import Template, encode_targets
from headsteer.steering import RowDeltas
from headsteer.tasks import Pair

MAX_EVAL_ROWS = 2048  # (prompt, variant) rows per suffix pass: bounds the repeated prefix cache
VOCAB_CHUNK = 4096  # unembedding rows per block of the streaming argmax/logsumexp


@torch.no_grad()
def first_token_scores(
    scored: FinalHidden, targets: Int[Tensor, " rows"]
) -> tuple[Float[Tensor, " rows"], Bool[Tensor, " rows"]]:
    """−log p(target) and whether the argmax token is the target, at the first scored position.

    One streaming pass over the unembedding (running max, log-sum-exp and argmax), so
    the ``[rows, vocab]`` logits are never held at once. Ties go to the lowest token id,
    as ``torch.argmax``.
    """
    hidden = scored.hidden[:, 0].float()
    weight, bias = scored.weight, scored.bias
    rows = hidden.shape[0]
    running_max = torch.full((rows,), -torch.inf, device=hidden.device)
    total = torch.zeros(rows, device=hidden.device)
    best = torch.zeros(rows, dtype=torch.long, device=hidden.device)
    for start in range(0, weight.shape[0], VOCAB_CHUNK):
        logits = hidden @ weight[start : start + VOCAB_CHUNK].float().T
        if bias is not None:
            logits = logits + bias[start : start + VOCAB_CHUNK].float()
        chunk_max, chunk_arg = logits.max(1)
        best = torch.where(chunk_max > running_max, chunk_arg + start, best)
        new_max = torch.maximum(running_max, chunk_max)
        total = total * torch.exp(running_max - new_max) + torch.exp(logits - new_max[:, None]).sum(1)
        running_max = new_max
    targets = targets.to(hidden.device)
    target_logit = (hidden * weight[targets].float()).sum(1) + (bias[targets].float() if bias is not None else 0)
    return (running_max + total.log() - target_logit).cpu(), (best == targets).cpu()


@torch.no_grad()
def heldout_scores(
    model, pairs: Sequence[Pair], template: Template, variants: RowDeltas, max_rows: int = MAX_EVAL_ROWS
) -> pd.DataFrame:
    """Per variant (a Δ at its layer): mean first-token NLL ``loss`` and ``accuracy`` over ``pairs``."""
    tokens, targets = encode_targets(model.tokenizer, template, list(pairs))
    first = targets.target_ids[:, 0]
    n_variants = len(variants.layers)
    per_chunk = max(1, max_rows // n_variants)  # prompts per pass; each is repeated once per variant
    nll = torch.zeros(len(pairs), n_variants)
    correct = torch.zeros(len(pairs), n_variants)
    with frozen(model):
        for rows in torch.arange(len(pairs)).split(per_chunk):
            prefix = build_prefix(model, tokens.select(rows), n_scored=1, repeats=n_variants)  # row i·V + v
            layers = variants.layers.repeat(len(rows))
            deltas = variants.deltas.repeat(len(rows), 1, 1).to(model.cfg.device)
            scored = run_suffix(model, prefix, layers, deltas)
            loss, hit = first_token_scores(scored, first[rows].repeat_interleave(n_variants))
            nll[rows] = loss.reshape(len(rows), n_variants)
            correct[rows] = hit.float().reshape(len(rows), n_variants)
    return pd.DataFrame({"variant": range(n_variants), "loss": nll.mean(0), "accuracy": correct.mean(0)})


def head_ablations(
    model, pairs: Sequence[Pair], template: Template, interventions: Sequence[Intervention]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out scores of each layer's Δ, of Δ without each head and of each head alone.

    Returns (per layer: layer, loss, accuracy, loss_zero_shot, accuracy_zero_shot;
    per (layer, head): loss_without, accuracy_without, loss_alone, accuracy_alone,
    necessity, sufficiency). A head with Δ_h = 0 is not run: without it Δ is
    unchanged and alone it is no Δ.
    """
    for iv in interventions:
        iv.check_fits(model)
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    layers: list[int] = [0]  # variant 0: no Δ (a zero Δ at any layer)
    deltas: list[Tensor] = [torch.zeros(n_heads, d_head)]
    index: dict[tuple[int, str, int], int] = {}
    for k, iv in enumerate(interventions):
        active = [h for h in range(n_heads) if iv.head_norms()[h] > 0]
        keep = [torch.arange(n_heads) == h for h in active]  # [n_heads] masks, one per active head
        variants = [("full", -1, iv.delta)]
        variants += [("without", h, iv.delta * (~mask)[:, None]) for h, mask in zip(active, keep)]
        variants += [("alone", h, iv.delta * mask[:, None]) for h, mask in zip(active, keep)]
        for kind, head, delta in variants:
            index[(k, kind, head)] = len(layers)
            layers.append(iv.layer)
            deltas.append(delta)
    scores = heldout_scores(model, pairs, template, RowDeltas(torch.tensor(layers), torch.stack(deltas)))
    loss, accuracy = scores["loss"].tolist(), scores["accuracy"].tolist()
    per_layer, per_head = [], []
    for k, iv in enumerate(interventions):
        full = index[(k, "full", -1)]
        per_layer.append(
            {
                "layer": iv.layer,
                "loss": loss[full],
                "accuracy": accuracy[full],
                "loss_zero_shot": loss[0],
                "accuracy_zero_shot": accuracy[0],
            }
        )
        gain = loss[0] - loss[full]
        for h in range(n_heads):
            without = index.get((k, "without", h), full)  # an inactive head: removing it changes nothing
            alone = index.get((k, "alone", h), 0)  # ... and alone it is no Δ
            per_head.append(
                {
                    "layer": iv.layer,
                    "head": h,
                    "loss_without": loss[without],
                    "accuracy_without": accuracy[without],
                    "loss_alone": loss[alone],
                    "accuracy_alone": accuracy[alone],
                    "necessity": (loss[without] - loss[full]) / gain if gain > 0 else float("nan"),
                    "sufficiency": (loss[0] - loss[alone]) / gain if gain > 0 else float("nan"),
                }
            )
    return pd.DataFrame(per_layer), pd.DataFrame(per_head)
