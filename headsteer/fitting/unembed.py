"""The unembedding read once: exact NLL and its input gradient in a single pass over W.

For final hidden states h_r (rows r) and the unembedding (W, b), with
l_rv = h_r·W_v + b_v, the NLL of target y_r and its gradient are

    L_r = logsumexp_v(l_rv) − l_{r,y_r},      ∂L_r/∂h_r = Σ_v softmax(l_r)_v W_v − W_{y_r}.

Both come out of one streaming pass over vocabulary chunks (an online
softmax: running max m, normaliser z and Σ_v e^{l_rv − m} W_v, rescaled as m
grows), so the memory-bound 262k × d matrix is read once per step rather
than once forward and once backward. Exact up to fp32 summation order.

Optionally (``FinalHidden.low_precision``, off by default) W is a bf16 copy
and both products per chunk run in bf16 (on a CPU with avx512_bf16 or AMX,
or a GPU, several times faster), while the running max, normaliser and sums
stay fp32: the loss and gradient then differ from fp32 by bf16's rounding of
the logits and of W (``tests/fitting/test_unembed.py`` bounds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.errors import ConfigError

CHUNK = 1024  # vocabulary rows per block: measured fastest of 1024/4096/16384 on a 2-core CPU


class _StreamedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
        # The products run in W's dtype (fp32, or bf16 with the low-precision option); everything else in fp32.
        rows, low = hidden.shape[0], hidden.to(weight.dtype)
        m = torch.full((rows,), -torch.inf, dtype=hidden.dtype, device=hidden.device)
        z = torch.zeros(rows, dtype=hidden.dtype, device=hidden.device)
        s = torch.zeros_like(hidden)
        for start in range(0, weight.shape[0], CHUNK):
            w = weight[start : start + CHUNK]
            logits = (low @ w.T).to(hidden.dtype)
            if bias is not None:
                logits = logits + bias[start : start + CHUNK]
            m_new = torch.maximum(m, logits.max(1).values)
            scale = torch.exp(m - m_new)
            p = torch.exp(logits - m_new[:, None])
            z = z * scale + p.sum(1)
            s = s * scale[:, None] + (p.to(weight.dtype) @ w).to(hidden.dtype)
            m = m_new
        w_y = weight[targets].to(hidden.dtype)
        target_logit = (hidden * w_y).sum(1) + (bias[targets] if bias is not None else 0)
        ctx.save_for_backward(s / z[:, None] - w_y)
        return m + z.log() - target_logit

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_out[:, None] * grad_hidden, None, None, None


@dataclass(frozen=True)
class FinalHidden:
    """Final (normalised) hidden states at the scored positions and the unembedding that reads them.

    Gradients flow to the hidden states only: the unembedding is a frozen weight here.
    ``low_precision``: ``weight`` is a bf16 copy and the NLL's products run in bf16 (see the module
    docstring); otherwise a half-precision weight is read in fp32.
    """

    hidden: Float[Tensor, "batch tgt d_model"]
    weight: Float[Tensor, "vocab d_model"]
    bias: Float[Tensor, " vocab"] | None = None
    low_precision: bool = False

    def __getitem__(self, index) -> FinalHidden:
        return FinalHidden(self.hidden[index], self.weight, self.bias, self.low_precision)

    def logits(self) -> Float[Tensor, "batch tgt vocab"]:
        """The full logits (materialised; for inspection, not for the fitting loop)."""
        return torch.nn.functional.linear(self.hidden, self.weight, self.bias)

    def token_nll(self, target_ids: Int[Tensor, "batch tgt"]) -> Float[Tensor, "batch tgt"]:
        """−log softmax(h W^T + b)[y] at every (row, position), W read once."""
        flat = _at_least_fp32(self.hidden.reshape(-1, self.hidden.shape[-1]))
        bias = _at_least_fp32(self.bias) if self.bias is not None else None
        weight = self.weight if self.low_precision else _at_least_fp32(self.weight)
        nll = _StreamedNLL.apply(flat, weight, bias, target_ids.reshape(-1))
        return nll.reshape(target_ids.shape)

    def logits_of(self, token_ids: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k"]:
        """The logits of a few tokens per row, at the first scored position."""
        logits = torch.einsum("bd,bkd->bk", _at_least_fp32(self.hidden[:, 0]), _at_least_fp32(self.weight[token_ids]))
        return logits + self.bias[token_ids] if self.bias is not None else logits


def _at_least_fp32(x: Tensor) -> Tensor:
    """Half-precision inputs are accumulated in fp32; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def output_embedding(model) -> tuple[Tensor, Tensor | None]:
    """(W, b) of the model's unembedding; refuses heads that are not one affine map (e.g. softcapping)."""
    hf = model.original_model
    if getattr(hf.config, "final_logit_softcapping", None):
        raise ConfigError("this model soft-caps its logits; use the naive forward (--no-fast)")
    head = hf.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight.detach(), bias.detach() if isinstance(bias, Tensor) else None
