"""A decoder layer's suffix step, forward and input gradient written out by hand (Gemma 3, Llama).

In a fit step the blocks above Δ's layer run on a handful of rows (one per training pair
and scored position) against the prefix's KV cache (:mod:`headsteer.fitting.from_layer`).
Through autograd, a Hugging Face ``Gemma3DecoderLayer`` is about a hundred small operations
forward and as many backward, each costing more than its arithmetic on ten rows: about 2.7 ms
per block of a 4.5 ms block step on Gemma 3 270M, the rest its linear layers. Here the same
forward is one autograd node whose backward is written out, giving ∂L/∂x and ∂L/∂Δ only (the
weights are frozen), its linear layers through :class:`~headsteer.fitting.linear_kernel.FrozenLinear`
and the stages between them (norms, rotary, attention) through :mod:`headsteer.fitting.block_ops`:
one C call each on CPU where the kernels loaded, torch's operations elsewhere. Where the kernels
can run all of it, the whole step is one C call each way instead (:mod:`headsteer.fitting.native_step`,
the same stages in the same order).

Forward for the rows' residual x ``[n, S, d_model]`` (S suffix positions), with
N(u) = u · rsqrt(mean(u²) + ε) · (c + w) an RMSNorm along the last dimension (c = 1 for Gemma,
0 for Llama)::

    a  = N_in(x);   q, k, v = a W_qᵀ, a W_kᵀ, a W_vᵀ        per head: q [n, H, S, d], k, v [n, H_kv, S, d]
    q̂  = R(N_q(q)),  k̂ = R(N_k(k))                        R: rotary, u cos + rotate_half(u) sin
    K, V = cache ⧺ k̂, cache ⧺ v                          the prefix's keys and values, then the suffix's
    P  = softmax(s · q̂ Kᵀ + mask);  z = P V + Δ           head h reads key/value head h // (H / H_kv)
    h  = x + N_pa(z W_oᵀ)                                  z: hook_z, Δ (if any) at suffix position 0 only
    y  = h + N_pf'(( act(b W_gᵀ) ⊙ b W_uᵀ ) W_dᵀ),  b = N_pf(h)

where an :class:`Architecture` says which norms a layer has (Llama: no N_q, N_k, N_pa, N_pf'; they
are the identity above) and its gate's activation (Gemma: tanh-approximated GELU; Llama: SiLU).
The backward applies the chain rule to each line in turn (∂ of N: r·g − u·r³·mean(g·u) with
r = rsqrt(mean(u²) + ε) and g the gradient times (c + w); of R: g cos + rotate_halfᵀ(g sin); of the
softmax: P ⊙ (∂P − Σ ∂P ⊙ P)); ∂L/∂Δ is ∂L/∂z at position 0. The cache is updated as the layer
updates it (the caller restores it after the step).

:func:`fused_blocks` offers one for each block of a TransformerBridge whose Hugging Face layer is
of a class in :data:`LAYERS`, in fp32 and eval mode, whose MLP gate computes the expected
activation. :meth:`FusedBlock.applies` is checked at every step, before Δ's hooks are added: a
block with a hook in it (a user's) runs as the model runs it, with Δ's hook where Δ enters there;
a block run by hand adds Δ itself. The plan that uses them checks that its block-by-block run
reproduces the model's forward, and does without them otherwise; ``tests/fitting/test_fused_block.py``
compares values and gradients with autograd through the layers.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from headsteer.fitting.bare_bridge import any_hook, global_module_hooks
from headsteer.fitting.block_ops import ops_for
from headsteer.fitting.linear_kernel import FrozenLinear, LinearGroup, ToBf16
from headsteer.fitting.native_step import native_step

__all__ = ["FusedBlock", "fused_blocks"]

LINEARS = ("qkv", "o", "gate_up", "down")  # a FusedBlock's linear layers: LinearGroups and FrozenLinears


def _child(module: nn.Module, name: str) -> nn.Module:
    """``module.<name>``, or the Hugging Face module in it where a bridge component holds that slot."""
    child = module._modules[name]
    assert child is not None, name
    wrapped = child._modules.get("_original_component")
    return child if wrapped is None else wrapped


def _frozen_linear(module: nn.Module) -> FrozenLinear:
    weight, bias = module.weight, module.bias
    assert isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
    return FrozenLinear(weight.detach(), None if bias is None else bias.detach())


class _Norm:
    """An RMSNorm's ε and its scale (offset + w: Gemma's norms scale by 1 + w, the others by w), taken once."""

    def __init__(self, module: nn.Module, offset: float) -> None:
        weight, settings = module.weight, vars(module)
        assert isinstance(weight, Tensor)
        self.eps = float(settings["eps"] if "eps" in settings else settings["variance_epsilon"])
        self.scale = (offset + weight.detach().float()).contiguous()


def _scale(norm: _Norm | None) -> Tensor | None:
    return None if norm is None else norm.scale


def _eps(norm: _Norm | None) -> float:
    return 0.0 if norm is None else norm.eps


@dataclass(frozen=True)
class Architecture:
    """What differs between the decoder layers written out here (all: rotary, grouped-query attention, gated MLP)."""

    norms: tuple[str, str | None, str, str | None]  # the RMSNorms before and after attention, before and after the MLP
    qk_norm: bool  # q and k normed per head before rotary
    norm_offset: float  # an RMSNorm scales by offset + w
    activation: Callable[[Tensor], Tensor]  # the MLP's gate
    activation_grad: Callable[[Tensor, Tensor], Tensor]  # (∂L/∂out, its input) -> ∂L/∂input
    gate: str  # the activation's name, for the whole step in C (headsteer.fitting.native_step.ACTIVATIONS)


GEMMA3 = Architecture(
    ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    qk_norm=True,
    norm_offset=1.0,
    activation=lambda u: F.gelu(u, approximate="tanh"),
    activation_grad=lambda g, u: torch.ops.aten.gelu_backward(g, u, approximate="tanh"),
    gate="gelu_tanh",
)
LLAMA = Architecture(
    ("input_layernorm", None, "post_attention_layernorm", None),
    qk_norm=False,
    norm_offset=0.0,
    activation=F.silu,
    activation_grad=torch.ops.aten.silu_backward,
    gate="silu",
)
# transformers' decoder layer classes (module, class) written out here, and how.
LAYERS = {("gemma3", "Gemma3DecoderLayer"): GEMMA3, ("llama", "LlamaDecoderLayer"): LLAMA}


class FusedBlock:
    """One decoder layer's suffix step as a single autograd node (see the module's docstring)."""

    def __init__(self, block: nn.Module, layer: nn.Module, architecture: Architecture) -> None:
        self.architecture = architecture
        attention, mlp = _child(layer, "self_attn"), _child(layer, "mlp")
        settings = vars(attention)  # a Hugging Face attention's plain attributes
        config = settings["config"]
        self.layer_idx, self.head_dim, self.scaling = settings["layer_idx"], settings["head_dim"], settings["scaling"]
        self.n_heads, self.n_kv = int(config.num_attention_heads), int(config.num_key_value_heads)
        offset = architecture.norm_offset
        pre_attention, post_attention, pre_mlp, post_mlp = architecture.norms
        self.n_in, self.n_pf = _Norm(_child(layer, pre_attention), offset), _Norm(_child(layer, pre_mlp), offset)
        self.n_pa, self.n_pff = (
            None if name is None else _Norm(_child(layer, name), offset) for name in (post_attention, post_mlp)
        )
        self.n_q: _Norm | None = _Norm(_child(attention, "q_norm"), offset) if architecture.qk_norm else None
        self.n_k: _Norm | None = _Norm(_child(attention, "k_norm"), offset) if architecture.qk_norm else None
        self.qkv = LinearGroup(tuple(_frozen_linear(_child(attention, f"{p}_proj")) for p in "qkv"))
        self.o = _frozen_linear(_child(attention, "o_proj"))
        self.gate_up = LinearGroup(tuple(_frozen_linear(_child(mlp, f"{p}_proj")) for p in ("gate", "up")))
        self.down = _frozen_linear(_child(mlp, "down_proj"))
        # Every module where a hook could change what the block computes; the bridge's own capture hooks
        # (which hand its attention component the residual, and call hook_mlp_in) are not among them.
        self._modules = tuple(block.modules())
        self.module_ids = frozenset(id(m) for m in self._modules)  # what a step run by hand leaves alone
        self._own_hooks = frozenset(h.id for h in getattr(block, "_capture_hook_handles", ()))
        self.native = native_step(self)  # the whole step in one C call each way, where the kernels run it

    def in_bf16(self, to_bf16: ToBf16) -> FusedBlock:
        """This block with its linear layers' kernels reading bf16 copies of their weights (``to_bf16`` makes or
        looks up each copy; q, k and v in one, gate and up in another); everything else shared. Not exact: see
        :class:`~headsteer.fitting.linear_kernel.FrozenLinear`."""
        lowered = copy.copy(self)
        for name in LINEARS:
            setattr(lowered, name, getattr(self, name).in_bf16(to_bf16))
        lowered.native = native_step(lowered)
        return lowered

    def applies(self, dtype: torch.dtype) -> bool:
        """Whether a call can run by hand now: fp32 rows, and no hook in the block nor any global module hook."""
        return dtype == torch.float32 and not global_module_hooks() and not any_hook(self._modules, self._own_hooks)

    def __call__(
        self, x: Float[Tensor, "n S d_model"], kwargs: dict, delta: Float[Tensor, "n n_heads d_head"] | None = None
    ) -> Float[Tensor, "n S d_model"]:
        """The block's output for residual x, called with the keyword arguments the model's forward gave it.

        ``delta``: Δ added to ``hook_z`` (the output projection's input, per head) at suffix position 0, as
        Δ's hook adds it where the block runs as the model runs it; its gradient comes back through autograd.
        """
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # the cache's name in transformers < 5.24, ≥ 5.24
        return _Step.apply(x, delta, self, (cos, sin, mask, cache))

    def forward(
        self, x: Tensor, delta: Tensor | None, cos: Tensor, sin: Tensor, mask: Tensor | None, cache
    ) -> tuple[Tensor, dict]:
        """The block's output and what its backward needs (no autograd graph): in one C call where it applies."""
        if self.native is not None and (done := self.native.forward(x, delta, cos, sin, mask, cache)) is not None:
            return done[0], {"native": done[1]}
        n, S, D = x.shape
        H, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        ops = ops_for(x)
        a, r_in = ops.norm(x, self.n_in.scale, self.n_in.eps)
        a = a.view(n * S, D)
        q, k, v = self.qkv(a)
        q, k, v = q.view(n, S, H, d), k.view(n, S, Hkv, d), v.view(n, S, Hkv, d)
        q_rot, r_q = ops.qk(q, _scale(self.n_q), _eps(self.n_q), cos, sin)  # [n, H, S, d]
        k_rot, r_k = ops.qk(k, _scale(self.n_k), _eps(self.n_k), cos, sin)  # [n, H_kv, S, d]
        v_heads = v.transpose(1, 2)
        keys, values = (k_rot, v_heads) if cache is None else cache.update(k_rot, v_heads, self.layer_idx)
        p, z = ops.attention(q_rot, keys, values, mask, self.scaling, delta)  # z: hook_z [n, S, H, d], Δ added
        attn = self.o(z.reshape(n * S, H * d)).view(n, S, D)
        h, r_pa = (x + attn, None) if self.n_pa is None else ops.norm(attn, self.n_pa.scale, self.n_pa.eps, add=x)
        b, r_pf = ops.norm(h, self.n_pf.scale, self.n_pf.eps)
        b = b.view(n * S, D)
        gate, up = self.gate_up(b)
        act = self.architecture.activation(gate)
        mlp = self.down(act * up).view(n, S, D)
        y, r_pff = (h + mlp, None) if self.n_pff is None else ops.norm(mlp, self.n_pff.scale, self.n_pff.eps, add=h)
        saved = dict(x=x, r_in=r_in, q=q, r_q=r_q, k=k, r_k=r_k, cos=cos, sin=sin, keys=keys, values=values,
                     q_rot=q_rot, p=p, attn=attn, r_pa=r_pa, h=h, r_pf=r_pf, gate=gate, up=up, act=act, mlp=mlp,
                     r_pff=r_pff)  # fmt: skip
        return y, saved

    def backward(self, grad_y: Tensor, s: dict) -> tuple[Tensor, Tensor]:
        """∂L/∂x and ∂L/∂Δ from ∂L/∂y, line by line back through :meth:`forward` (or its C call)."""
        if "native" in s:
            assert self.native is not None
            return self.native.backward(grad_y, s["native"])
        n, S, D = grad_y.shape
        H, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        ops = ops_for(grad_y)
        # y = h + N_pff(mlp) (or h + mlp)
        grad_mlp = grad_y if self.n_pff is None else ops.norm_grad(s["mlp"], s["r_pff"], self.n_pff.scale, grad_y)
        grad_product = self.down.input_grad(grad_mlp.reshape(n * S, D))
        grad_gate = self.architecture.activation_grad(grad_product * s["up"], s["gate"])
        grad_b = self.gate_up.input_grad(grad_gate, grad_product * s["act"])
        # b = N_pf(h), and h reaches y directly
        grad_h = ops.norm_grad(s["h"], s["r_pf"], self.n_pf.scale, grad_b.view(n, S, D), add=grad_y)
        # h = x + N_pa(z W_oᵀ) (or x + z W_oᵀ)
        grad_attn = grad_h if self.n_pa is None else ops.norm_grad(s["attn"], s["r_pa"], self.n_pa.scale, grad_h)
        grad_z = self.o.input_grad(grad_attn.reshape(n * S, D)).view(n, S, H, d)
        grad_q_rot, grad_k_rot, grad_v = ops.attention_grad(
            grad_z, s["p"], s["q_rot"], s["keys"], s["values"], self.scaling
        )  # the suffix's own keys and values only: the cache's are frozen
        grad_q = ops.qk_grad(grad_q_rot, s["q"], s["r_q"], _scale(self.n_q), s["cos"], s["sin"])
        grad_k = ops.qk_grad(grad_k_rot, s["k"], s["r_k"], _scale(self.n_k), s["cos"], s["sin"])
        grad_a = self.qkv.input_grad(
            grad_q.reshape(n * S, H * d), grad_k.reshape(n * S, Hkv * d), grad_v.reshape(n * S, Hkv * d)
        )
        grad_x = ops.norm_grad(s["x"], s["r_in"], self.n_in.scale, grad_a.view(n, S, D), add=grad_h)
        return grad_x, grad_z[:, 0]


class _Step(torch.autograd.Function):
    """y = block(x; Δ) with ∂L/∂x and ∂L/∂Δ by :meth:`FusedBlock.backward`."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor | None, block: FusedBlock, inputs: tuple) -> Tensor:
        y, ctx.saved = block.forward(x, delta, *inputs)
        ctx.block = block
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        grad_x, grad_delta = ctx.block.backward(grad_y.contiguous(), ctx.saved)
        return grad_x, grad_delta if ctx.needs_input_grad[1] else None, None, None


def fused_blocks(blocks: Iterable[tuple[int, nn.Module]]) -> dict[int, FusedBlock]:
    """A :class:`FusedBlock` for each (index, block) bridging an fp32 decoder layer of :data:`LAYERS` in eval mode."""
    known: dict[type, Architecture] = {}
    for (module, name), architecture in LAYERS.items():
        try:
            layer_class = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name)
        except (ImportError, AttributeError):  # a transformers without it
            continue
        known[layer_class] = architecture
    fused = {}
    for index, block in blocks:
        layer = block._modules.get("_original_component")
        found = known.get(type(layer))
        if layer is None or found is None or layer.training:
            continue
        if all(p.dtype == torch.float32 for p in layer.parameters()) and _gate_is(layer, found):
            fused[index] = FusedBlock(block, layer, found)
    return fused


def _gate_is(layer: nn.Module, architecture: Architecture) -> bool:
    """Whether the layer's MLP gate computes the architecture's activation (a config may choose another)."""
    probe = torch.linspace(-6, 6, 97)
    act_fn = _child(layer, "mlp").act_fn
    assert callable(act_fn)
    with torch.no_grad():
        return torch.allclose(act_fn(probe), architecture.activation(probe), rtol=1e-6, atol=1e-7)
