"""Task losses, one value per example, from what the forward gives at the scored positions.

``scored[i, j]`` is position ``last_index[i] + j`` (the one that predicts the
answer's j-th token): either its logits ``[batch, tgt, vocab]`` or, from the
prefix-cached forward, its final hidden state with the unembedding
(:class:`FinalHidden`, which never materialises the full logits).
"""

from __future__ import annotations

from typing import Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headsteer.fitting.unembed import FinalHidden
from headsteer.prompts import AnswerTargets, OptionTargets, Targets

Scored = Union[Float[Tensor, "batch tgt vocab"], FinalHidden]


def _token_nll(scored: Scored, target_ids: Int[Tensor, "batch tgt"]) -> Float[Tensor, "batch tgt"]:
    if isinstance(scored, FinalHidden):
        return scored.token_nll(target_ids)
    logp = torch.log_softmax(scored.float(), dim=-1)
    return -logp.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)


def first_token_nll(scored: Scored, target_ids: Int[Tensor, "batch answer"]) -> Float[Tensor, " batch"]:
    """L_i = −log p(y_i,1 | x_i): NLL of the target's first token (the paper's loss).

    ``scored`` may hold one position or more (only the first is read); ``target_ids`` the whole answer.
    """
    return _token_nll(scored[:, :1], target_ids[:, :1]).squeeze(-1)


def sequence_nll(
    scored: Scored, target_ids: Int[Tensor, "batch tgt"], target_mask: Bool[Tensor, "batch tgt"]
) -> Float[Tensor, " batch"]:
    """L_i = −Σ_j log p(y_i,j | x_i, y_i,<j): teacher-forced NLL of the whole answer.

    Only real answer positions are scored: a batch is padded to its longest answer, and the padding
    never reaches the unembedding (a product with the whole vocabulary per scored position: the
    largest cost of a step).
    """
    real = target_mask.bool()
    if isinstance(scored, FinalHidden):
        hidden = scored.hidden[real.to(scored.hidden.device)][:, None]  # [real positions, 1, d_model]
        at_real: Scored = FinalHidden(hidden, scored.weight, scored.bias, scored.softcap, scored.low_precision)
    else:
        at_real = scored[real.to(scored.device)][:, None]  # [real positions, 1, vocab]
    values = _token_nll(at_real, target_ids[real][:, None])[:, 0]
    rows = real.nonzero()[:, 0].to(values.device)
    return torch.zeros(real.shape[0], dtype=values.dtype, device=values.device).index_add(0, rows, values)


def option_log_probs(scored: Scored, options: OptionTargets) -> Float[Tensor, "batch options"]:
    """log q_i: the next-token distribution renormalised over row i's option tokens (−inf at padding)."""
    if isinstance(scored, FinalHidden):
        logits = scored.logits_of(options.option_ids)
    else:
        logits = scored[:, 0].float().gather(-1, options.option_ids)
    return torch.log_softmax(logits.masked_fill(~options.option_mask, float("-inf")), dim=-1)


def option_kl(scored: Scored, options: OptionTargets) -> Float[Tensor, " batch"]:
    """L_i = KL(p_i ‖ q_i) = Σ_k p_ik (log p_ik − log q_ik).

    q_i is the model's next-token distribution renormalised over the option
    tokens (softmax of their logits only); p_i the target distribution. The
    forward direction KL(target ‖ model) is mass-covering: it is large when
    the model gives little probability to an answer the group often picks.
    """
    log_q = option_log_probs(scored, options)
    p = options.probs * options.option_mask
    log_p = torch.where(p > 0, p.clamp_min(1e-30).log(), torch.zeros_like(p))
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


# The uniform share mixed into a target distribution before KL(model ‖ target): a group that gave an option
# no answers would otherwise make any model mass there infinitely bad. 1% is a pseudo-count of about one
# respondent in a hundred spread over the options.
OPTION_SMOOTHING = 0.01


def option_kl_reverse(scored: Scored, options: OptionTargets) -> Float[Tensor, " batch"]:
    """L_i = KL(q_i ‖ p̃_i) = Σ_k q_ik (log q_ik − log p̃_ik), the paper's direction, with p̃_i = (1 − ε) p_i + ε / K_i.

    q_i is the model's distribution over row i's K_i options (as in :func:`option_kl`), p_i the target's,
    smoothed by ε = :data:`OPTION_SMOOTHING` so that an option the group never chose costs a finite
    amount. The reverse direction is mode-seeking: it is small when the model puts its mass where the
    group's is, even if it leaves some of the group's answers out.
    """
    # Padding options have log q = −inf; zero them before any product, or 0 · ∞ poisons the gradient.
    log_q = option_log_probs(scored, options).masked_fill(~options.option_mask, 0.0)
    k = options.option_mask.sum(-1, keepdim=True)
    smoothed = (1 - OPTION_SMOOTHING) * options.probs + OPTION_SMOOTHING / k
    log_p = smoothed.clamp_min(1e-30).log().masked_fill(~options.option_mask, 0.0)
    q = log_q.exp() * options.option_mask
    return (q * (log_q - log_p)).sum(-1)


def scored_positions(loss: str, targets: Targets) -> int:
    """How many positions from the last prompt token on the loss reads."""
    if loss == "sequence" and isinstance(targets, AnswerTargets):
        return targets.target_ids.shape[1]
    return 1


def task_loss(loss: str, scored: Scored, targets: Targets) -> Float[Tensor, " batch"]:
    """Dispatch to the named per-example loss, checking the targets fit it."""
    if loss in ("option_kl", "option_kl_reverse"):
        if not isinstance(targets, OptionTargets):
            raise TypeError(f"loss {loss!r} needs OptionTargets (option ids and a target distribution)")
        return option_kl(scored, targets) if loss == "option_kl" else option_kl_reverse(scored, targets)
    if not isinstance(targets, AnswerTargets):
        raise TypeError(f"loss {loss!r} needs AnswerTargets (answer token ids)")
    if loss == "first_token":
        return first_token_nll(scored, targets.target_ids)
    if loss == "sequence":
        return sequence_nll(scored, targets.target_ids, targets.target_mask)
    raise ValueError(f"unknown loss {loss!r}")
