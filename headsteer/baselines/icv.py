"""In-context vectors (Liu et al. 2023) from the same training pairs.

For each pair, the last-token hidden states of the input text x_i and of
the output text y_i at every layer give a difference

    d_i = [h_ℓ(y_i) − h_ℓ(x_i)]_{ℓ=1..L}  ∈ R^{L·d_model}

and the ICV is the first principal direction u of {d_i}, signed to agree with
their mean and scaled to their mean norm (v = u · mean_i ‖d_i‖, so α = 1 adds
a typical demonstration's shift), split back per layer into v_ℓ. At inference it is
added at every position of every layer's residual stream with strength α,
keeping each hidden state's norm:

    h'_ℓ = (h_ℓ + α v_ℓ) · ‖h_ℓ‖ / ‖h_ℓ + α v_ℓ‖

x_i and y_i are the raw input and output words (no template), as Liu et
al. encode a demonstration's source and target texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.errors import ModelMismatchError
from headsteer.hooks import PromptPositions, last_token_activations, resid_post_name
from headsteer.models import ModelSignature
from headsteer.prompts import encode_texts
from headsteer.steering import Applies, Hook
from headsteer.tasks import Pair


@dataclass(frozen=True)
class InContextVector(Applies):
    """The ICV split by layer (v_ℓ) and the strength α it is added with."""

    vectors: Float[Tensor, "n_layers d_model"]
    strength: float
    model: ModelSignature
    task: str = ""

    def check_fits(self, model) -> None:
        problems = self.model.mismatches(ModelSignature.of(model))
        if problems:
            raise ModelMismatchError(f"in-context vector for {self.task!r} does not fit this model: {problems}")

    def hooks(self, positions: PromptPositions) -> list[Hook]:
        """Every layer's v_ℓ at every position (prompt, cache and generated tokens alike); ``positions`` unused."""
        return [(resid_post_name(layer), NormPreservingAdd(self.strength * v)) for layer, v in enumerate(self.vectors)]


class NormPreservingAdd:
    """``fn(act, hook) -> act``: add ``vector`` at every position, then restore each position's norm."""

    def __init__(self, vector: Float[Tensor, " d_model"]):
        self.vector = vector

    def __call__(self, act: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
        moved = act + self.vector.to(device=act.device, dtype=act.dtype)
        scale = act.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return moved * scale


def last_token_states(model, texts: Sequence[str]) -> Float[Tensor, "batch n_layers d_model"]:
    """Every layer's residual stream after the block, at each text's last token."""
    tokens = encode_texts(model.tokenizer, list(texts))
    names = [resid_post_name(layer) for layer in range(model.cfg.n_layers)]
    return torch.stack(last_token_activations(model, tokens.input_ids, tokens.attention_mask, names), dim=1)


def fit_icv(model, pairs: Sequence[Pair], strength: float = 0.1, task: str = "") -> InContextVector:
    """The first principal direction of the per-pair hidden-state differences (see the module docstring)."""
    if len(pairs) < 2:
        raise ValueError(f"an in-context vector needs at least 2 pairs, got {len(pairs)}")
    diffs = last_token_states(model, [p.output for p in pairs]) - last_token_states(model, [p.input for p in pairs])
    flat = diffs.flatten(1).double()
    centred = flat - flat.mean(0, keepdim=True)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    if direction @ flat.mean(0) < 0:
        direction = -direction
    vectors = (direction * flat.norm(dim=1).mean()).float().reshape(diffs.shape[1:])
    return InContextVector(vectors, strength, ModelSignature.of(model), task)
