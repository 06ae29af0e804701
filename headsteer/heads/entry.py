"""Where each head switches on to first order: the task loss's gradient at Δ = 0, every layer at once.

With γ = λ = s, the zero block Δ_h = 0 is optimal for the other heads fixed iff

    ‖soft(g_h, s)‖₂ ≤ s,      g_h = ∂f/∂Δ_h,   soft(x, s) = sign(x) · max(|x| − s, 0),

and a proximal step from Δ = 0 (``prox_adam``'s first step too: its metric cancels)
moves head h iff that fails. The head's **entry strength** e_h is the root of
‖soft(g_h(0), e)‖₂ = e: a fit from zero moves head h in its first step iff s < e_h.
A layer whose heads all have e_h ≤ s stays exactly at zero for every step of a fit
at s (the gradient at 0 never changes), so the λ path need not run it there.

Δ at one layer does not change the forward while every other layer's Δ is zero, so
one forward and backward with a zero Δ at every layer gives g at all layers; and
since row i's loss depends on row i's Δ only, the backward of Σ_i L_i gives each
pair's own gradient: a resample's gradient is the mean of its pairs'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.fitting.forward import build_prefix, run_suffix
from headsteer.fitting.loop import MAX_ROWS, frozen
from headsteer.fitting.losses import scored_positions, task_loss
from headsteer.hooks import AtIndex, PromptEndAdd, added_hooks, check_layer
from headsteer.prompts import Template, encode_targets
from headsteer.tasks import Pair


def pair_gradients(
    model, pairs: Sequence[Pair], template: Template, layers: Sequence[int], loss: str = "first_token"
) -> tuple[Float[Tensor, "pairs layers n_heads d_head"], Float[Tensor, " pairs"]]:
    """Each pair's gradient of its task loss w.r.t. Δ at every layer in ``layers``, at Δ = 0; and its loss there."""
    hooks_at = [check_layer(model, layer) for layer in layers]
    tokens, targets = encode_targets(model.tokenizer, template, list(pairs), include_stop=loss == "sequence")
    n_scored = scored_positions(loss, targets)
    shape = (len(layers), model.cfg.n_heads, model.cfg.d_head)
    grads, losses = [], []
    with frozen(model):
        for rows in torch.arange(len(tokens)).split(MAX_ROWS):
            part, part_targets = tokens.select(rows), targets.select(rows)
            prefix = build_prefix(model, part, n_scored)
            delta = torch.zeros(len(rows), *shape, device=model.cfg.device, requires_grad=True)
            at_suffix_start = AtIndex(torch.zeros(len(rows), dtype=torch.long), prompt_len=1)
            hooks = [(name, PromptEndAdd(delta[:, i], at_suffix_start)) for i, name in enumerate(hooks_at)]
            with torch.enable_grad(), added_hooks(model, hooks):
                per_row = task_loss(loss, run_suffix(model, prefix), part_targets)
                (grad,) = torch.autograd.grad(per_row.sum(), delta)
            grads.append(grad.detach().cpu())
            losses.append(per_row.detach().cpu())
    return torch.cat(grads), torch.cat(losses)


def entry_strengths(grad: Float[Tensor, "*heads d_head"], iterations: int = 64) -> Float[Tensor, " *heads"]:
    """e with ‖soft(g, e)‖₂ = e for each head's gradient g (0 for g = 0), by bisection in float64.

    φ(e) = ‖soft(g, e)‖₂ − e falls strictly from ‖g‖₂ ≥ 0 at e = 0 to −max|g| at e = max|g|,
    so the root is unique; 64 halvings leave it exact to float64's resolution.
    """
    g = grad.double().abs()
    low, high = torch.zeros(g.shape[:-1], dtype=torch.float64), g.amax(-1)
    for _ in range(iterations):
        mid = (low + high) / 2
        above = torch.linalg.vector_norm((g - mid[..., None]).clamp_min(0), dim=-1) > mid
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return low.float()


def strength_grid(top: float, chosen: float, points: int) -> tuple[float, ...]:
    """``points`` + 1 strengths from ``top`` down to ``chosen``, evenly spaced on a log scale (both ends in).

    With ``top`` ≤ ``chosen`` nothing is on above ``chosen``: the grid is ``(chosen,)``.
    """
    if not chosen > 0:
        raise ValueError(f"the grid ends at the chosen strength, which must be > 0, got {chosen!r}")
    if top <= chosen:
        return (chosen,)
    ratio = chosen / top
    return (*(top * ratio ** (i / points) for i in range(points)), chosen)
