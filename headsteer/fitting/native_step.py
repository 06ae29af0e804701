"""A hand-written block's whole suffix step as one C call each way, where it applies.

:class:`~headsteer.fitting.fused_block.FusedBlock` writes a block's step out as a dozen stages
each way (its linear layers, norms, rotary, attention, the gate's activation), each one call
from Python. On ten rows a call's dispatch and allocations cost about as much as its arithmetic:
with the bf16 option, about a third of a fit step on Gemma 3 270M went to Python and torch
between the kernels. ``headsteer/kernels/block_step.c`` runs the same stages in the same order
from one call, on buffers carved from one workspace tensor that the forward fills and the
backward reads; its comment lists what it does differently (nothing that changes a value
beyond fp32 summation order). A :class:`NativeStep` describes one block to it, once;
:meth:`NativeStep.forward` returns None where a call does not fit, and the block's stages then
run one by one: fp32 CPU rows, at most as many as the linear kernel takes for the block's
weights, against a cache that keeps each layer's keys and values (transformers' caches) and a
mask as long as those keys.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.fitting.linear_kernel import FrozenLinear, LinearGroup, frozen_cpu
from headsteer.kernels import BlockDescription, GroupDescription, Kernels, library, pointer

if TYPE_CHECKING:
    from headsteer.fitting.fused_block import FusedBlock

__all__ = ["NativeStep", "native_step"]

ACTIVATIONS = {"gelu_tanh": 0, "silu": 1}  # the gates block_step.c computes (its ACT_* values), by name
GROUPS = ("qkv", "o", "gate_up", "down")  # a FusedBlock's linear layers, in BlockDescription's order


def _group(linears: LinearGroup | FrozenLinear, kernels: Kernels) -> tuple[GroupDescription, list[Tensor], int] | None:
    """The C description of a layer or group, with the weights the kernel reads (a group's stacked bf16 copy, or
    each layer's kernel weight), the tensors it points to and the most rows a call may have; None where a weight is
    not one the kernel reads."""
    if isinstance(linears, LinearGroup) and linears.kernel_weight is not None:
        parts, outputs = [(linears.kernel_weight, linears.bias)], linears.outputs
    else:
        layers = linears.layers if isinstance(linears, LinearGroup) else (linears,)
        parts, outputs = [(layer.kernel_weight, layer.bias) for layer in layers], [w.weight.shape[0] for w in layers]
    description = GroupDescription(parts=len(parts), outputs=len(outputs))
    tensors: list[Tensor] = []
    max_rows = kernels.linear_max_rows_bf16
    for j, (weight, bias) in enumerate(parts):
        if not (frozen_cpu(weight, dtypes=(torch.float32, torch.bfloat16)) and frozen_cpu(bias)):
            return None
        bf16 = weight.dtype == torch.bfloat16
        description.weight[j], description.rows[j], description.bf16[j] = weight.data_ptr(), weight.shape[0], bf16
        description.bias[j] = pointer(bias)
        tensors += [weight] if bias is None else [weight, bias]
        max_rows = min(max_rows, kernels.linear_max_rows_bf16 if bf16 else kernels.linear_max_rows)
    for i, width in enumerate(outputs):
        description.out[i] = width
    return description, tensors, max_rows


@dataclass(frozen=True)
class Saved:
    """What :meth:`NativeStep.backward` reads: the forward's workspace, and the inputs the C call read."""

    workspace: Tensor
    scratch: int  # the floats of scratch a call takes, with this many threads:
    threads: int
    x: Tensor
    cos: Tensor
    sin: Tensor
    prefix: int  # the cache's positions


class NativeStep:
    """One block's step through ``headsteer_block_forward`` and ``headsteer_block_backward`` (see the module)."""

    def __init__(
        self, block: FusedBlock, kernels: Kernels, description: BlockDescription, tensors: list[Tensor], max_rows: int
    ) -> None:
        self.block, self.kernels, self.description, self.max_rows = block, kernels, description, max_rows
        self._tensors = tensors  # what the description points to, kept alive with it

    def forward(
        self,
        x: Float[Tensor, "n S d_model"],
        delta: Float[Tensor, "n n_heads d_head"] | None,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache,
    ) -> tuple[Float[Tensor, "n S d_model"], Saved] | None:
        """The block's output and what the backward reads, or None where this call does not fit (see the module)."""
        n, S, _ = x.shape
        block = self.block
        layers = getattr(cache, "layers", None)
        if n * S > self.max_rows or x.dtype != torch.float32 or x.device.type != "cpu" or layers is None:
            return None
        keys, values = (getattr(layers[block.layer_idx], name, None) for name in ("keys", "values"))
        if not (isinstance(keys, Tensor) and isinstance(values, Tensor)):
            return None
        T0 = keys.shape[2]
        if keys.shape != (n, block.n_kv, T0, block.head_dim) or values.shape != keys.shape:
            return None
        if not frozen_cpu(keys, values):
            return None
        if mask is not None and mask.shape[-1] != T0 + S:
            return None
        x = x.detach().contiguous()
        cos, sin = (t.detach().expand(n, S, block.head_dim).float().contiguous() for t in (cos, sin))
        if mask is not None:
            mask = mask.expand(n, block.n_heads, S, T0 + S).float().contiguous()
        if delta is not None:
            delta = delta.detach().float().contiguous()
        threads = torch.get_num_threads()
        sizes = (ctypes.c_long * 2)()
        self.kernels.block_sizes(self.description, n, S, T0 + S, threads, sizes)
        workspace, scratch, y = torch.empty(sizes[0]), torch.empty(sizes[1]), torch.empty_like(x)
        self.kernels.block_forward(
            self.description, x.data_ptr(), pointer(delta), cos.data_ptr(), sin.data_ptr(), pointer(mask),
            keys.data_ptr(), values.data_ptr(), n, S, T0, y.data_ptr(), workspace.data_ptr(), scratch.data_ptr(),
            threads,
        )  # fmt: skip
        return y, Saved(workspace, sizes[1], threads, x, cos, sin, T0)

    def backward(
        self, grad_y: Float[Tensor, "n S d_model"], saved: Saved
    ) -> tuple[Float[Tensor, "n S d_model"], Float[Tensor, "n n_heads d_head"]]:
        """∂L/∂x and ∂L/∂Δ from ∂L/∂y, with what :meth:`forward` returned."""
        n, S, _ = grad_y.shape
        grad_y = grad_y.float().contiguous()
        grad_x = torch.empty_like(grad_y)
        grad_delta, scratch = grad_y.new_empty(n, self.block.n_heads, self.block.head_dim), torch.empty(saved.scratch)
        self.kernels.block_backward(
            self.description, grad_y.data_ptr(), saved.x.data_ptr(), saved.cos.data_ptr(), saved.sin.data_ptr(),
            n, S, saved.prefix, saved.workspace.data_ptr(), scratch.data_ptr(), grad_x.data_ptr(),
            grad_delta.data_ptr(), saved.threads,
        )  # fmt: skip
        return grad_x, grad_delta


def native_step(block: FusedBlock) -> NativeStep | None:
    """A :class:`NativeStep` for ``block`` where the kernels loaded, its gate is one the C computes and its weights
    are ones the kernel reads; else None."""
    kernels = library()
    if isinstance(kernels, str) or block.architecture.gate not in ACTIVATIONS:
        return None
    groups = {name: _group(getattr(block, name), kernels) for name in GROUPS}
    description = BlockDescription(
        D=block.o.weight.shape[0],
        H=block.n_heads,
        Hkv=block.n_kv,
        d=block.head_dim,
        F=block.down.weight.shape[1],
        act=ACTIVATIONS[block.architecture.gate],
        scaling=block.scaling,
    )
    tensors: list[Tensor] = []
    max_rows = kernels.linear_max_rows_bf16
    for name, found in groups.items():
        if found is None:
            return None
        group, held, rows = found
        setattr(description, name, group)
        tensors += held
        max_rows = min(max_rows, rows)
    norms = (block.n_in, block.n_q, block.n_k, block.n_pa, block.n_pf, block.n_pff)  # hs_block's NORM_* order
    for i, norm in enumerate(norms):
        if norm is not None:
            if not frozen_cpu(norm.scale):
                return None
            description.scale[i], description.eps[i] = norm.scale.data_ptr(), norm.eps
            tensors.append(norm.scale)
    return NativeStep(block, kernels, description, tensors, max_rows)
