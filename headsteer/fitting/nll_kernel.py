"""The streamed NLL's pass over the unembedding as one fused CPU kernel, where it applies.

:mod:`headsteer.fitting.unembed` computes, for a few rows of final hidden states,
the online-softmax state (m, z, s) over the whole vocabulary: the logsumexp is
m + log z and its gradient s / z. In torch that is a loop of chunk-sized ops:
with ten rows both products per chunk are skinny GEMMs that stock kernels run
far below the CPU's speed, and each op is a parallel region of its own. The C
kernel (``headsteer/kernels/nll.c``) does a chunk's two products and its
softmax update while the chunk sits in the L2 cache, prefetching the next, on
each thread's own share of the vocabulary; the shares' states are merged here::

    m = max_t m_t,   z = Σ_t z_t e^{m_t − m},   s = Σ_t s_t e^{m_t − m}

It runs where it applies: CPU tensors, fp32 hidden states, at most ``nll_max_rows`` (64) of them
with fp32 W and ``nll_max_rows_bf16`` (256) with bf16 W (past them the torch loop is as fast:
``benchmarks/kernel_rows.py``), W stored
row by row (``[vocab, d_model]``, as a Hugging Face ``lm_head``) in fp32, or in
bf16 with the low-precision option (widened to fp32 as it is read: fp32
products of bf16 weights), no soft cap, where :mod:`headsteer.kernels` loaded.
Anywhere else :func:`online_softmax` returns None and the torch loop runs; the
two agree up to fp32 summation order in fp32 (``tests/fitting/test_nll_kernel.py``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.kernels import library, pointer, split_scratch


def online_softmax(
    hidden: Float[Tensor, "rows d_model"],
    weight: Float[Tensor, "vocab d_model"],
    bias: Float[Tensor, " vocab"] | None,
    low_precision: bool,
) -> tuple[Float[Tensor, " rows"], Float[Tensor, " rows"], Float[Tensor, "rows d_model"]] | None:
    """(m, z, s) over the whole vocabulary (see the module docstring), or None where the kernel does not apply.

    ``low_precision``: ``weight`` is bf16 (each element widened to fp32 as it is read); otherwise fp32.
    """
    kernels = library()
    wanted = torch.bfloat16 if low_precision else torch.float32
    if (
        isinstance(kernels, str)
        or hidden.shape[0] > (kernels.nll_max_rows_bf16 if low_precision else kernels.nll_max_rows)
        or hidden.device.type != "cpu"
        or weight.device.type != "cpu"
        or hidden.dtype != torch.float32
        or weight.dtype != wanted
        or not weight.is_contiguous()
        or (bias is not None and (bias.dtype != torch.float32 or bias.device.type != "cpu"))
    ):
        return None
    hidden = hidden.detach().contiguous()
    bias = None if bias is None else bias.detach().contiguous()
    rows, width = hidden.shape
    shares = torch.get_num_threads()  # one share of the vocabulary per thread, each with its own state
    m = torch.full((shares, rows), -torch.inf)
    z = torch.zeros(shares, rows)
    s = torch.zeros(shares, rows, width)
    pointers = (hidden.data_ptr(), weight.data_ptr(), pointer(bias))
    split = split_scratch(rows, width) if low_precision else None  # kept alive until the call returns
    state = (m.data_ptr(), z.data_ptr(), s.data_ptr())
    kernels.nll(
        *pointers,
        rows,
        width,
        weight.shape[0],
        shares,
        *state,
        low_precision,
        pointer(split),
    )
    top = m.max(0).values
    weights = torch.exp(m - top)
    return top, (z * weights).sum(0), (s * weights[..., None]).sum(0)
