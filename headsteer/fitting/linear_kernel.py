"""The linear layers above Δ's layer, for a few rows, through a CPU kernel where it applies.

In a fit step every block from Δ's layer on runs on a handful of rows, one per training pair
and scored position (the suffix against the prefix cache, :mod:`headsteer.fitting.from_layer`).
Each ``nn.Linear`` there multiplies those rows with a frozen weight W ``[out, in]``::

    forward   y  = x Wᵀ + b
    backward  ∂L/∂x = (∂L/∂y) W        (no gradient for W or b: the model is frozen)

Stock GEMMs run such skinny products well below the speed at which the CPU reads W, the
forward's layout slowest of all; ``headsteer/kernels/linear.c`` reads W once per product,
streaming and prefetching, each thread on its own share of W's rows.

:func:`skinny_linears` routes the ``nn.Linear`` layers inside some modules through it for the
duration of a ``with`` block, each call where it applies: CPU, fp32 input, weight and bias,
a contiguous weight that needs no gradient with at least ``MIN_WEIGHT_ELEMENTS`` (2^18) elements,
at most ``linear_max_rows`` (32; 64 on an AMD CPU) rows, and :mod:`headsteer.kernels` loaded; any other call runs
``F.linear`` as before. Only plain
``nn.Linear`` modules whose ``forward`` nobody else replaced are touched, and each is given
back its own ``forward`` on leaving, whatever happens. :class:`FrozenLinear` is the same product
and input gradient without autograd, for a backward written out by hand
(:mod:`headsteer.fitting.fused_block`); with a bf16 copy of its weight (the bf16 option) the kernel
takes up to ``linear_max_rows_bf16`` (48; 64 on AMD) rows. The results equal ``F.linear``'s up to fp32 summation order
(``tests/fitting/test_linear_kernel.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from headsteer.kernels import Kernels, library, pointer, split_scratch


def kernel_forward(x: Float[Tensor, "rows d_in"], weight: Tensor, bias: Tensor | None, kernels: Kernels) -> Tensor:
    """y = x Wᵀ + b by the kernel; x ``[rows, in]`` contiguous fp32, W ``[out, in]`` as :func:`_weight_fits` takes
    (or its contiguous bf16 copy: each element widened to fp32 as the kernel reads it)."""
    rows, width = x.shape
    y = x.new_empty(rows, weight.shape[0])
    shares = torch.get_num_threads()
    bf16 = weight.dtype == torch.bfloat16
    split = split_scratch(rows, width) if bf16 else None  # kept alive until the call returns
    args = (x.data_ptr(), weight.data_ptr(), pointer(bias), y.data_ptr(), rows, width, weight.shape[0], shares, bf16)
    kernels.linear(*args, pointer(split))
    return y


def kernel_input_grad(grad_y: Float[Tensor, "rows d_out"], weight: Tensor, kernels: Kernels) -> Tensor:
    """∂L/∂x = (∂L/∂y) W by the kernel; W as in :func:`kernel_forward`."""
    grad_y = grad_y.float().contiguous()
    rows, width = grad_y.shape[0], weight.shape[1]
    shares = torch.get_num_threads()
    grad_x = grad_y.new_empty(rows, width)
    scratch = grad_y.new_empty(max(shares - 1, 1), rows, width)  # the other threads' partial sums
    args = (grad_y.data_ptr(), weight.data_ptr(), grad_x.data_ptr(), rows, weight.shape[0], width, shares)
    kernels.linear_input_grad(*args, scratch.data_ptr(), int(weight.dtype == torch.bfloat16))
    return grad_x


class _SkinnyLinear(torch.autograd.Function):
    """y = x Wᵀ + b and ∂L/∂x = (∂L/∂y) W by the kernel; x ``[rows, in]``, W ``[out, in]`` contiguous fp32."""

    @staticmethod
    def forward(
        ctx, x: Float[Tensor, "rows d_in"], weight: Tensor, bias: Tensor | None, kernels: Kernels
    ) -> Float[Tensor, "rows d_out"]:
        ctx.save_for_backward(weight)
        ctx.kernels = kernels
        return kernel_forward(x, weight, bias, kernels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Float[Tensor, "rows d_out"]):
        (weight,) = ctx.saved_tensors
        return kernel_input_grad(grad_y, weight, ctx.kernels), None, None, None


# Below this many weight elements torch's GEMM is as fast (the kernel's fixed cost per call is not repaid):
# measured with ``python benchmarks/profile_step.py --linears`` on Gemma 3 270M's layers (its k and v, 640 × 256).
MIN_WEIGHT_ELEMENTS = 2**18


def frozen_cpu(*tensors: Tensor | None, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Frozen, contiguous CPU tensors of ``dtypes``, as the kernels read them (None: absent, fine)."""
    return all(
        t.dtype in dtypes and t.device.type == "cpu" and not t.requires_grad and t.is_contiguous()
        for t in tensors
        if t is not None
    )


def _weight_fits(weight: Tensor, bias: Tensor | None) -> bool:
    """A large, frozen, contiguous fp32 CPU weight (and bias): what the kernel takes, checked once per ``with``."""
    return weight.numel() >= MIN_WEIGHT_ELEMENTS and frozen_cpu(weight, bias)


def _kernel_takes(x: Tensor, max_rows: int) -> bool:
    """Rows the kernel multiplies: fp32 on the CPU, at most ``max_rows`` of them."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[0] <= max_rows


# Makes (or looks up) one contiguous bf16 copy of some weights [out_i, in] stacked along their outputs: [Σ out_i, in].
ToBf16 = Callable[[tuple[Tensor, ...]], Tensor]


def _routed_forward(weight: Tensor, bias: Tensor | None, kernels: Kernels) -> Callable[[Tensor], Tensor]:
    """A forward for the layer of ``weight`` and ``bias``: the kernel for inputs it takes, else ``F.linear``."""
    d_out, d_in = weight.shape

    def forward(x: Tensor) -> Tensor:
        rows = x.numel() // d_in
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[-1] != d_in or rows > kernels.linear_max_rows:
            return F.linear(x, weight, bias)
        y = _SkinnyLinear.apply(x.reshape(rows, d_in).contiguous(), weight, bias, kernels)
        return y.reshape(*x.shape[:-1], d_out)

    return forward


class FrozenLinear:
    """A frozen linear layer's product and input gradient, without autograd, for a hand-written backward pass.

    Each call goes through the kernel where it applies (as :func:`skinny_linears` decides), else torch.
    ``kernel_weight``: a contiguous bf16 copy of ``weight`` for the kernel to read instead (half the
    memory traffic; the products stay fp32, only W's rounding differs), where the kernel applies.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, kernel_weight: Tensor | None = None) -> None:
        if kernel_weight is not None and not (
            kernel_weight.dtype == torch.bfloat16
            and kernel_weight.shape == weight.shape
            and kernel_weight.is_contiguous()
        ):
            shape = tuple(weight.shape)
            raise ValueError(f"FrozenLinear: kernel_weight must be a contiguous bf16 copy of the {shape} weight")
        self.weight, self.bias = weight, bias
        kernels = library()
        self.kernels = kernels if not isinstance(kernels, str) and _weight_fits(weight, bias) else None
        # What the kernel reads: the weight, or its bf16 copy (the bf16 option); torch's path always reads the weight.
        self.kernel_weight = weight if kernel_weight is None else kernel_weight
        if self.kernels is not None:  # the rows a call may have to go through the kernel, for the weight it reads
            bf16 = self.kernel_weight.dtype == torch.bfloat16
            self.max_rows = self.kernels.linear_max_rows_bf16 if bf16 else self.kernels.linear_max_rows

    def in_bf16(self, to_bf16: ToBf16) -> FrozenLinear:
        """The same layer, its kernel reading ``to_bf16((weight,))`` (a bf16 copy, made or looked up by the caller)."""
        return FrozenLinear(self.weight, self.bias, to_bf16((self.weight,)) if self.kernels is not None else None)

    def __call__(self, x: Float[Tensor, "rows d_in"]) -> Float[Tensor, "rows d_out"]:
        if self.kernels is not None and _kernel_takes(x, self.max_rows):
            return kernel_forward(x.contiguous(), self.kernel_weight, self.bias, self.kernels)
        return F.linear(x, self.weight, self.bias)

    def input_grad(self, grad_y: Float[Tensor, "rows d_out"]) -> Float[Tensor, "rows d_in"]:
        if self.kernels is not None and _kernel_takes(grad_y, self.max_rows):
            return kernel_input_grad(grad_y, self.kernel_weight, self.kernels)
        return grad_y @ self.weight


class LinearGroup:
    """Frozen linear layers that read the same input (a block's q, k and v; its gate and up projections).

    Their outputs y_i = x W_iᵀ + b_i, and the sum of their input gradients Σ_i (∂L/∂y_i) W_i, each layer through
    its :class:`FrozenLinear`. :meth:`in_bf16` gives the group one bf16 copy of its weights stacked, [Σ out_i, in],
    which the kernel reads in one call each way where it applies: one longer stream where the layers' own calls
    were several short ones, each paying the memory's latency as it starts (k and v on Gemma 3 270M are too
    small for the kernel alone; RESEARCH.md measures the gain). Elsewhere (more rows than the kernel takes, no
    kernel) each layer runs as its own :class:`FrozenLinear`, in fp32.
    """

    def __init__(self, layers: tuple[FrozenLinear, ...], kernel_weight: Tensor | None = None) -> None:
        widths = {layer.weight.shape[1] for layer in layers}
        if len(widths) != 1:
            raise ValueError(f"LinearGroup: its layers must read inputs of one width, got {sorted(widths)}")
        self.layers = layers
        self.outputs = [layer.weight.shape[0] for layer in layers]
        self.kernel_weight = kernel_weight  # the stacked bf16 copy, or None: each layer on its own
        kernels = library()
        self.kernels = kernels if kernel_weight is not None and not isinstance(kernels, str) else None
        self.bias: Tensor | None = None  # the biases stacked as the kernel adds them (a layer without one: zeros)
        if self.kernels is not None:
            self.max_rows = self.kernels.linear_max_rows_bf16
            biases = [layer.bias for layer in layers]
            if any(b is not None for b in biases):
                stacked = (torch.zeros(n) if b is None else b for b, n in zip(biases, self.outputs, strict=True))
                self.bias = torch.cat(list(stacked))

    def in_bf16(self, to_bf16: ToBf16) -> LinearGroup:
        """The group with its kernel reading one stacked bf16 copy of its weights (``to_bf16`` makes or looks it up),
        where the kernel can take them: frozen fp32 CPU weights, as many elements together as
        :data:`MIN_WEIGHT_ELEMENTS`; else each layer's own :meth:`FrozenLinear.in_bf16`."""
        weights = tuple(layer.weight for layer in self.layers)
        stackable = frozen_cpu(*weights, *(layer.bias for layer in self.layers))
        if isinstance(library(), str) or not stackable or sum(w.numel() for w in weights) < MIN_WEIGHT_ELEMENTS:
            return LinearGroup(tuple(layer.in_bf16(to_bf16) for layer in self.layers))
        return LinearGroup(self.layers, to_bf16(weights))

    def __call__(self, x: Float[Tensor, "rows d_in"]) -> tuple[Tensor, ...]:
        """Each layer's output for x: ``[rows, out_i]`` (views of one product where the kernel ran)."""
        if self.kernels is not None and _kernel_takes(x, self.max_rows):
            assert self.kernel_weight is not None
            y = kernel_forward(x.contiguous(), self.kernel_weight, self.bias, self.kernels)
            return y.split(self.outputs, dim=1)
        return tuple(layer(x) for layer in self.layers)

    def input_grad(self, *grads_y: Tensor) -> Float[Tensor, "rows d_in"]:
        """Σ_i (∂L/∂y_i) W_i, from each layer's ∂L/∂y_i ``[rows, out_i]`` in order."""
        if self.kernels is not None and _kernel_takes(grads_y[0], self.max_rows):
            assert self.kernel_weight is not None
            return kernel_input_grad(torch.cat(grads_y, dim=1), self.kernel_weight, self.kernels)
        total = self.layers[0].input_grad(grads_y[0])
        for layer, grad_y in zip(self.layers[1:], grads_y[1:], strict=True):
            total = total + layer.input_grad(grad_y)
        return total


def plain_linears(modules: Iterable[nn.Module]) -> tuple[nn.Linear, ...]:
    """The ``nn.Linear`` layers inside ``modules``: exactly that class (a subclass may compute something else)."""
    found = {id(m): m for root in modules for m in root.modules() if type(m) is nn.Linear}
    return tuple(found.values())


@contextmanager
def skinny_linears(linears: Iterable[nn.Linear]) -> Iterator[None]:
    """Within the block, ``linears`` (see :func:`plain_linears`) use the kernel where it applies."""
    kernels = library()
    if isinstance(kernels, str):
        yield
        return
    # Not a layer whose forward was replaced already (accelerate's hooks), nor one the kernel cannot take.
    patched = [m for m in linears if "forward" not in vars(m) and _weight_fits(m.weight, m.bias)]
    try:
        for module in patched:
            module.forward = _routed_forward(module.weight, module.bias, kernels)  # type: ignore[method-assign,assignment]
        yield
    finally:
        for module in patched:
            vars(module).pop("forward", None)
