"""A decoder layer's suffix step, forward and input gradient written out by hand (Gemma 3, Llama).

In a fit step the blocks above Δ's layer run on a handful of rows (one per training pair
and scored position) against the prefix's KV cache (:mod:`headsteer.fitting.from_layer`).
Through autograd, a Hugging Face ``Gemma3DecoderLayer`` is about a hundred small operations
forward and as many backward, each costing more than its arithmetic on ten rows: about 2.7 ms
per block of a 4.5 ms block step on Gemma 3 270M, the rest its linear layers. Here the same
forward is one autograd node whose backward is written out, giving ∂L/∂x and ∂L/∂Δ only (the
weights are frozen), its linear layers through :class:`~headsteer.fitting.linear_kernel.FrozenLinear`.

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

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from headsteer.fitting.bare_bridge import any_hook, global_module_hooks
from headsteer.fitting.linear_kernel import FrozenLinear

__all__ = ["FusedBlock", "fused_blocks"]


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


def _norm(u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(u · r, r) with r = rsqrt(mean(u²) + ε) along the last dimension."""
    r = torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)
    return u * r, r


def _norm_grad(u: Tensor, r: Tensor, g: Tensor) -> Tensor:
    """∂L/∂u for u · r (r as :func:`_norm` gives it), g = ∂L/∂(u · r)."""
    return r * g - u * (r.pow(3) * (g * u).mean(-1, keepdim=True))


def _normed(norm: _Norm | None, u: Tensor) -> tuple[Tensor, Tensor | None]:
    """(N(u), r), or (u, None) where the layer has no such norm."""
    return (u, None) if norm is None else norm(u)


def _normed_grad(norm: _Norm | None, u: Tensor, r: Tensor | None, grad_out: Tensor) -> Tensor:
    return grad_out if norm is None or r is None else norm.grad(u, r, grad_out)


def _rotate_half(u: Tensor) -> Tensor:
    half = u.shape[-1] // 2
    return torch.cat((-u[..., half:], u[..., :half]), dim=-1)


def _rotate_half_transposed(g: Tensor) -> Tensor:
    """The transpose of :func:`_rotate_half` (a signed permutation) applied to g."""
    half = g.shape[-1] // 2
    return torch.cat((g[..., half:], -g[..., :half]), dim=-1)


class _Norm:
    """An RMSNorm's ε and its scale (offset + w: Gemma's norms scale by 1 + w, the others by w), taken once."""

    def __init__(self, module: nn.Module, offset: float) -> None:
        weight, settings = module.weight, vars(module)
        assert isinstance(weight, Tensor)
        self.eps = float(settings["eps"] if "eps" in settings else settings["variance_epsilon"])
        self.scale = offset + weight.detach().float()

    def __call__(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(N(u), r)."""
        normed, r = _norm(u, self.eps)
        return normed * self.scale, r

    def grad(self, u: Tensor, r: Tensor, grad_out: Tensor) -> Tensor:
        return _norm_grad(u, r, grad_out * self.scale)


@dataclass(frozen=True)
class Architecture:
    """What differs between the decoder layers written out here (all: rotary, grouped-query attention, gated MLP)."""

    norms: tuple[str, str | None, str, str | None]  # the RMSNorms before and after attention, before and after the MLP
    qk_norm: bool  # q and k normed per head before rotary
    norm_offset: float  # an RMSNorm scales by offset + w
    activation: Callable[[Tensor], Tensor]  # the MLP's gate
    activation_grad: Callable[[Tensor, Tensor], Tensor]  # (∂L/∂out, its input) -> ∂L/∂input


GEMMA3 = Architecture(
    ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    qk_norm=True,
    norm_offset=1.0,
    activation=lambda u: F.gelu(u, approximate="tanh"),
    activation_grad=lambda g, u: torch.ops.aten.gelu_backward(g, u, approximate="tanh"),
)
LLAMA = Architecture(
    ("input_layernorm", None, "post_attention_layernorm", None),
    qk_norm=False,
    norm_offset=0.0,
    activation=F.silu,
    activation_grad=torch.ops.aten.silu_backward,
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
        self.q, self.k, self.v, self.o = (_frozen_linear(_child(attention, f"{p}_proj")) for p in "qkvo")
        self.gate, self.up, self.down = (_frozen_linear(_child(mlp, f"{p}_proj")) for p in ("gate", "up", "down"))
        # Every module where a hook could change what the block computes; the bridge's own capture hooks
        # (which hand its attention component the residual, and call hook_mlp_in) are not among them.
        self._modules = tuple(block.modules())
        self.module_ids = frozenset(id(m) for m in self._modules)  # what a step run by hand leaves alone
        self._own_hooks = frozenset(h.id for h in getattr(block, "_capture_hook_handles", ()))

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
        return _Step.apply(x, delta, self, (cos.unsqueeze(1), sin.unsqueeze(1), mask, cache))

    def forward(
        self, x: Tensor, delta: Tensor | None, cos: Tensor, sin: Tensor, mask: Tensor | None, cache
    ) -> tuple[Tensor, dict]:
        """The block's output and what its backward needs (no autograd graph)."""
        n, S, D = x.shape
        H, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        a, r_in = self.n_in(x)
        a = a.reshape(n * S, D)
        q = self.q(a).view(n, S, H, d).transpose(1, 2)
        k = self.k(a).view(n, S, Hkv, d).transpose(1, 2)
        v = self.v(a).view(n, S, Hkv, d).transpose(1, 2)
        qn, r_q = _normed(self.n_q, q)
        kn, r_k = _normed(self.n_k, k)
        q_rot = qn * cos + _rotate_half(qn) * sin
        k_rot = kn * cos + _rotate_half(kn) * sin
        keys, values = (k_rot, v) if cache is None else cache.update(k_rot, v, self.layer_idx)
        T = keys.shape[-2]
        # Query heads grouped by the key/value head they read: [n, H_kv, (H / H_kv) · S, d].
        q_grouped = q_rot.reshape(n, Hkv, H // Hkv * S, d)
        scores = (q_grouped @ keys.transpose(-1, -2) * self.scaling).view(n, H, S, T)
        if mask is not None:
            scores = scores + mask
        p = torch.softmax(scores, dim=-1).view(n, Hkv, H // Hkv * S, T)
        z = (p @ values).view(n, H, S, d).transpose(1, 2)  # hook_z: [n, S, H, d]
        if delta is not None:
            z = torch.cat([z[:, :1] + delta[:, None], z[:, 1:]], dim=1)
        attn = self.o(z.reshape(n * S, H * d)).view(n, S, D)
        attn_out, r_pa = _normed(self.n_pa, attn)
        h = x + attn_out
        b, r_pf = self.n_pf(h)
        b = b.reshape(n * S, D)
        gate, up = self.gate(b), self.up(b)
        act = self.architecture.activation(gate)
        mlp = self.down(act * up).view(n, S, D)
        mlp_out, r_pff = _normed(self.n_pff, mlp)
        y = h + mlp_out
        saved = dict(x=x, r_in=r_in, q=q, r_q=r_q, k=k, r_k=r_k, cos=cos, sin=sin, keys=keys, values=values,
                     q_grouped=q_grouped, p=p, attn=attn, r_pa=r_pa, h=h, r_pf=r_pf, gate=gate, up=up, act=act,
                     mlp=mlp, r_pff=r_pff)  # fmt: skip
        return y, saved

    def backward(self, grad_y: Tensor, s: dict) -> tuple[Tensor, Tensor]:
        """∂L/∂x and ∂L/∂Δ from ∂L/∂y, line by line back through :meth:`forward`."""
        n, S, D = grad_y.shape
        H, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        # y = h + N_pff(mlp) (or h + mlp)
        grad_mlp = _normed_grad(self.n_pff, s["mlp"], s["r_pff"], grad_y).reshape(n * S, D)
        grad_product = self.down.input_grad(grad_mlp)
        grad_gate = self.architecture.activation_grad(grad_product * s["up"], s["gate"])
        grad_b = self.gate.input_grad(grad_gate) + self.up.input_grad(grad_product * s["act"])
        # b = N_pf(h), and h reaches y directly
        grad_h = grad_y + self.n_pf.grad(s["h"], s["r_pf"], grad_b.view(n, S, D))
        # h = x + N_pa(z W_oᵀ) (or x + z W_oᵀ)
        grad_attn = _normed_grad(self.n_pa, s["attn"], s["r_pa"], grad_h).reshape(n * S, D)
        grad_z = self.o.input_grad(grad_attn).view(n, S, H, d)
        grad_o = grad_z.transpose(1, 2).reshape(n, Hkv, H // Hkv * S, d)
        p, keys, values = s["p"], s["keys"], s["values"]
        grad_values = p.transpose(-1, -2) @ grad_o  # [n, H_kv, T, d]
        grad_p = grad_o @ values.transpose(-1, -2)
        grad_scores = p * (grad_p - (grad_p * p).sum(-1, keepdim=True)) * self.scaling
        grad_q_rot = (grad_scores @ keys).view(n, H, S, d)
        grad_k_rot = (grad_scores.transpose(-1, -2) @ s["q_grouped"])[:, :, -S:]  # the suffix's own keys
        grad_v = grad_values[:, :, -S:]
        cos, sin = s["cos"], s["sin"]
        grad_qn = grad_q_rot * cos + _rotate_half_transposed(grad_q_rot * sin)
        grad_kn = grad_k_rot * cos + _rotate_half_transposed(grad_k_rot * sin)
        grad_q = _normed_grad(self.n_q, s["q"], s["r_q"], grad_qn)
        grad_k = _normed_grad(self.n_k, s["k"], s["r_k"], grad_kn)
        grad_a = (
            self.q.input_grad(grad_q.transpose(1, 2).reshape(n * S, H * d))
            + self.k.input_grad(grad_k.transpose(1, 2).reshape(n * S, Hkv * d))
            + self.v.input_grad(grad_v.transpose(1, 2).reshape(n * S, Hkv * d))
        )
        return grad_h + self.n_in.grad(s["x"], s["r_in"], grad_a.view(n, S, D)), grad_z[:, 0]


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
