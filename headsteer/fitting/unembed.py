"""The unembedding read once: exact NLL and its input gradient in a single pass over W.

For final hidden states h_r (rows r) and the unembedding (W, b), with
l_rv = h_r·W_v + b_v, the NLL of target y_r and its gradient are

    L_r = logsumexp_v(l_rv) − l_{r,y_r},      ∂L_r/∂h_r = Σ_v softmax(l_r)_v W_v − W_{y_r}.

A soft-capped model (Gemma 2's ``final_logit_softcapping`` c) scores
l'_rv = c·tanh(l_rv / c) instead; with d_rv = ∂l'_rv/∂l_rv = 1 − tanh²(l_rv / c),

    L_r = logsumexp_v(l'_rv) − l'_{r,y_r},    ∂L_r/∂h_r = Σ_v softmax(l'_r)_v d_rv W_v − d_{r,y_r} W_{y_r}.

Both come out of one streaming pass over vocabulary chunks (an online
softmax: running max m, normaliser z and Σ_v e^{l'_rv − m} d_rv W_v, rescaled
as m grows), so the memory-bound 262k × d matrix is read once per step rather
than once forward and once backward. Each chunk of W is cast to the hidden
states' dtype (fp32 for a half-precision model) as it is read. Exact up to
fp32 summation order. On a CPU with AVX-512 the uncapped pass runs as one
fused kernel (:mod:`headsteer.fitting.nll_kernel`), the torch loop elsewhere.

Optionally (``FinalHidden.low_precision``, off by default) W is a bf16 copy,
half the bytes to read. On a GPU both products per chunk then run in bf16 (several
times faster), while the running max, normaliser and sums stay fp32: the loss and
gradient differ from fp32 by bf16's rounding of the logits and of W
(``tests/fitting/test_unembed.py`` bounds it). On a CPU each chunk is widened to
fp32 as it is read, as the fused kernel widens each element, so there only W's
rounding differs (bf16 products took 1.7× as long as fp32 ones on this project's
AVX-512 CPU without AMX: RESEARCH.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.fitting.nll_kernel import online_softmax

CHUNK = 1024  # vocabulary rows per block: measured fastest of 1024/4096/16384 on a 2-core CPU


class _StreamedNLL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        softcap: float | None,
        low_precision: bool,
    ) -> Tensor:
        fused = None if softcap is not None else online_softmax(hidden, weight, bias, low_precision)
        m, z, s = fused if fused is not None else _online_softmax(hidden, weight, bias, softcap, low_precision)
        w_y = weight[targets].to(hidden.dtype)
        target_logit, target_slope = _capped(
            (hidden * w_y).sum(1, keepdim=True) + (bias[targets, None].to(hidden.dtype) if bias is not None else 0),
            softcap,
        )
        ctx.save_for_backward(s / z[:, None] - (w_y if target_slope is None else target_slope * w_y))
        return m + z.log() - target_logit[:, 0]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_out[:, None] * grad_hidden, None, None, None, None, None


def _online_softmax(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None, low_precision: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(m, z, s) of the module docstring in torch, ``CHUNK`` vocabulary rows at a time (s with the cap's slope)."""
    # The products run in W's dtype with the low-precision option on a GPU (bf16), else in the hidden states' (fp32).
    rows = hidden.shape[0]
    m = torch.full((rows,), -torch.inf, dtype=hidden.dtype, device=hidden.device)
    z = torch.zeros(rows, dtype=hidden.dtype, device=hidden.device)
    s = torch.zeros_like(hidden)
    for start in range(0, weight.shape[0], CHUNK):
        w = weight[start : start + CHUNK]
        w = w if low_precision and w.device.type != "cpu" else w.to(hidden.dtype)
        logits, slope = _capped(_affine(hidden, w, bias, slice(start, start + CHUNK)), softcap)
        m_new = torch.maximum(m, logits.max(1).values)
        scale = torch.exp(m - m_new)
        p = torch.exp(logits - m_new[:, None])
        z = z * scale + p.sum(1)
        s = s * scale[:, None] + ((p if slope is None else p * slope).to(w.dtype) @ w).to(hidden.dtype)
        m = m_new
    return m, z, s


def _affine(hidden: Tensor, w: Tensor, bias: Tensor | None, rows: slice) -> Tensor:
    """h·W_v + b_v for the vocabulary rows ``rows`` (``w`` is W[rows]): the product in w's dtype, the sum in h's."""
    logits = (hidden.to(w.dtype) @ w.T).to(hidden.dtype)
    return logits if bias is None else logits + bias[rows].to(hidden.dtype)


def _capped(logits: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """(l', dl'/dl): (c·tanh(l/c), 1 − tanh²(l/c)), or (l, None) without a cap."""
    if softcap is None:
        return logits, None
    t = torch.tanh(logits / softcap)
    return softcap * t, 1 - t * t


def soft_cap(logits: Tensor, softcap: float | None) -> Tensor:
    """l' = c·tanh(l/c) (differentiable), or l where there is no cap."""
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


@dataclass(frozen=True)
class FinalHidden:
    """Final (normalised) hidden states at the scored positions and the unembedding that reads them.

    Gradients flow to the hidden states only: the unembedding is a frozen weight here.
    ``softcap`` is c where the model scores c·tanh(l/c) (None: the logits l themselves).
    ``low_precision``: ``weight`` is a bf16 copy, read in bf16 (see the module docstring); otherwise
    a half-precision weight is read in fp32.
    """

    hidden: Float[Tensor, "batch tgt d_model"]
    weight: Float[Tensor, "vocab d_model"]
    bias: Float[Tensor, " vocab"] | None = None
    softcap: float | None = None
    low_precision: bool = False

    def __getitem__(self, index) -> FinalHidden:
        return FinalHidden(self.hidden[index], self.weight, self.bias, self.softcap, self.low_precision)

    def logits(self) -> Float[Tensor, "batch tgt vocab"]:
        """The full logits (materialised; for inspection and decoding, not for the fitting loop)."""
        hidden = self.hidden.to(self.weight.device)
        return soft_cap(torch.nn.functional.linear(hidden, self.weight, self.bias), self.softcap)

    def token_nll(self, target_ids: Int[Tensor, "batch tgt"]) -> Float[Tensor, "batch tgt"]:
        """−log softmax(l')[y] at every (row, position), W read once (see the module docstring)."""
        # On a model split over devices the last block's output may sit elsewhere than the unembedding.
        flat = _at_least_fp32(self.hidden.reshape(-1, self.hidden.shape[-1]).to(self.weight.device))
        targets = target_ids.reshape(-1).to(self.weight.device)
        nll = _StreamedNLL.apply(flat, self.weight, self.bias, targets, self.softcap, self.low_precision)
        return nll.reshape(target_ids.shape)

    def logits_of(self, token_ids: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k"]:
        """The logits (soft-capped where the model caps them) of a few tokens per row, at the first scored position."""
        ids = token_ids.to(self.weight.device)
        hidden = _at_least_fp32(self.hidden[:, 0].to(self.weight.device))
        logits = torch.einsum("bd,bkd->bk", hidden, self.weight[ids].to(hidden.dtype))
        if self.bias is not None:
            logits = logits + self.bias[ids].to(hidden.dtype)
        return soft_cap(logits, self.softcap)


def _at_least_fp32(x: Tensor) -> Tensor:
    """Half-precision inputs are accumulated in fp32; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
