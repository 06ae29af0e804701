"""The streamed NLL's pass over the unembedding as one fused CPU kernel, where it applies.

:mod:`headsteer.fitting.unembed` computes, for a few rows of final hidden states,
the online-softmax state (m, z, s) over the whole vocabulary: the logsumexp is
m + log z and its gradient s / z. In torch that is a loop of chunk-sized ops:
with ten rows both products per chunk are skinny GEMMs that stock kernels run
far below the CPU's speed, and each op is a parallel region of its own. The C
kernel (``headsteer/kernels/nll.c``) does a chunk's two products and its
softmax update while the chunk sits in the L2 cache, prefetching the next, on
each core's own share of the vocabulary; the shares' states are merged here::

    m = max_t m_t,   z = Σ_t z_t e^{m_t − m},   s = Σ_t s_t e^{m_t − m}

It runs where it applies: CPU tensors, at most ``max_rows`` (32) fp32 hidden
states (past about 30 rows the torch loop's GEMMs are the faster), W stored
row by row (``[vocab, d_model]``, as a Hugging Face ``lm_head``) in fp32, or in
bf16 with the low-precision option (widened to fp32 as it is read: fp32
products of bf16 weights), no soft cap, on an x86-64 CPU with AVX-512 and a C
compiler (``$CC``, else ``cc``). Anywhere else :func:`online_softmax` returns
None and the torch loop runs; the two agree up to fp32 summation order in fp32
(``tests/fitting/test_nll_kernel.py``).
``HEADSTEER_NLL_KERNEL=0`` turns the kernel off; :func:`headsteer.kernels.nll_status`
says whether it loaded, or why not (:mod:`headsteer.kernels` builds it on first use).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.kernels import nll_library


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="headsteer-nll")


def online_softmax(
    hidden: Float[Tensor, "rows d_model"],
    weight: Float[Tensor, "vocab d_model"],
    bias: Float[Tensor, " vocab"] | None,
    low_precision: bool,
) -> tuple[Float[Tensor, " rows"], Float[Tensor, " rows"], Float[Tensor, "rows d_model"]] | None:
    """(m, z, s) over the whole vocabulary (see the module docstring), or None where the kernel does not apply.

    ``low_precision``: ``weight`` is bf16 (each element widened to fp32 as it is read); otherwise fp32.
    """
    library = nll_library()
    wanted = torch.bfloat16 if low_precision else torch.float32
    if (
        isinstance(library, str)
        or hidden.shape[0] > library.max_rows
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
    vocab = weight.shape[0]
    block = library.block  # each thread's share starts at a whole block
    threads = max(1, min(torch.get_num_threads(), vocab // block))
    bounds = [vocab * t // threads // block * block for t in range(threads)] + [vocab]
    m = torch.full((threads, rows), -torch.inf)
    z = torch.zeros(threads, rows)
    s = torch.zeros(threads, rows, width)
    kernel = library.bf16 if low_precision else library.f32

    def share(t: int) -> None:  # thread t's share of the vocabulary
        pointers = [hidden.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr()]
        kernel(*pointers, rows, width, bounds[t], bounds[t + 1], m[t].data_ptr(), z[t].data_ptr(), s[t].data_ptr())

    # ctypes releases the GIL for the call, so the shares run in parallel.
    list(_pool(threads).map(share, range(threads)))
    top = m.max(0).values
    weights = torch.exp(m - top)
    return top, (z * weights).sum(0), (s * weights[..., None]).sum(0)
