"""The operations of a decoder layer's hand-written suffix step between its linear layers: torch's, or one C call each.

:mod:`headsteer.fitting.fused_block` writes a block's forward and backward out as a few stages
between its linear layers; each stage is one method here, in two implementations with the same
layouts and results (up to fp32 summation order): :class:`TorchOps`, a handful of torch operations
each, anywhere; and :class:`KernelOps`, one call each into ``headsteer/kernels/block.c``, for CPU
tensors where :mod:`headsteer.kernels` loaded. On ten rows torch's operations cost more to dispatch
than to compute (about 100 per block each way, about 27 ms of a 98 ms fit step on Gemma 3 270M);
the C calls do the same arithmetic in one pass each. :func:`ops_for` picks one per call.

RMSNorm: N(u) = u · r · scale with r = rsqrt(mean(u²) + ε) along the last dimension; its gradient
for u from g is r·g' − u·r³·mean(g'·u) with g' = g · scale. Rotary: R(u) = u cos + rotate_half(u) sin;
its transpose R'(g) = g cos + rotate_halfᵀ(g sin). Attention (query head h reading key/value head
h // (H / H_kv)): P = softmax(s · q Kᵀ + mask), z = P V (+ Δ at suffix position 0).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.kernels import Kernels, library, pointer

__all__ = ["KernelOps", "TorchOps", "ops_for"]


def _rotate_half(u: Tensor) -> Tensor:
    half = u.shape[-1] // 2
    return torch.cat((-u[..., half:], u[..., :half]), dim=-1)


def _rotate_half_transposed(g: Tensor) -> Tensor:
    """The transpose of :func:`_rotate_half` (a signed permutation) applied to g."""
    half = g.shape[-1] // 2
    return torch.cat((g[..., half:], -g[..., :half]), dim=-1)


class TorchOps:
    """The stages in torch's operations (any device)."""

    @staticmethod
    def norm(
        u: Float[Tensor, "*rows dim"], scale: Float[Tensor, " dim"], eps: float, add: Tensor | None = None
    ) -> tuple[Float[Tensor, "*rows dim"], Float[Tensor, "*rows 1"]]:
        """(add + N(u), r); ``add`` None: nothing added."""
        r = torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)
        out = u * r * scale
        return out if add is None else add + out, r

    @staticmethod
    def norm_grad(
        u: Float[Tensor, "*rows dim"],
        r: Tensor,
        scale: Tensor,
        g: Float[Tensor, "*rows dim"],
        add: Tensor | None = None,
    ) -> Float[Tensor, "*rows dim"]:
        """add + ∂L/∂u from g = ∂L/∂N(u), r as :meth:`norm` gave it."""
        g = g * scale
        out = r * g - u * (r.pow(3) * (g * u).mean(-1, keepdim=True))
        return out if add is None else add + out

    @classmethod
    def qk(
        cls,
        u: Float[Tensor, "n S heads d"],
        scale: Tensor | None,
        eps: float,
        cos: Float[Tensor, "#n S d"],
        sin: Tensor,
    ) -> tuple[Float[Tensor, "n heads S d"], Tensor | None]:
        """(R(N(u)) per head, heads first as the cache keeps them; r), N the identity where ``scale`` is None."""
        normed, r = (u, None) if scale is None else cls.norm(u, scale, eps)
        normed = normed.transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return normed * cos + _rotate_half(normed) * sin, r

    @classmethod
    def qk_grad(
        cls,
        g: Float[Tensor, "n heads S d"],
        u: Tensor,
        r: Tensor | None,
        scale: Tensor | None,
        cos: Tensor,
        sin: Tensor,
    ) -> Float[Tensor, "n S heads d"]:
        """∂L/∂u from g = ∂L/∂ :meth:`qk` (u)."""
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        unrotated = (g * cos + _rotate_half_transposed(g * sin)).transpose(1, 2)
        return unrotated if scale is None or r is None else cls.norm_grad(u, r, scale, unrotated)

    @staticmethod
    def attention(
        q: Float[Tensor, "n H S d"],
        keys: Float[Tensor, "n H_kv T d"],
        values: Float[Tensor, "n H_kv T d"],
        mask: Tensor | None,
        scaling: float,
        delta: Float[Tensor, "n H d"] | None,
    ) -> tuple[Float[Tensor, "n H S T"], Float[Tensor, "n S H d"]]:
        """(P, z): ``mask`` broadcasts to P's shape (None: no mask), z is hook_z's layout with Δ added."""
        n, H, S, d = q.shape
        Hkv, T = keys.shape[1], keys.shape[2]
        q_grouped = q.reshape(n, Hkv, H // Hkv * S, d)  # query heads grouped by the key/value head they read
        scores = (q_grouped @ keys.transpose(-1, -2) * scaling).view(n, H, S, T)
        if mask is not None:
            scores = scores + mask
        p = torch.softmax(scores, dim=-1)
        z = (p.view(n, Hkv, H // Hkv * S, T) @ values).view(n, H, S, d).transpose(1, 2)
        if delta is not None:
            z = torch.cat([z[:, :1] + delta[:, None], z[:, 1:]], dim=1)
        return p, z

    @staticmethod
    def attention_grad(
        grad_z: Float[Tensor, "n S H d"], p: Tensor, q: Tensor, keys: Tensor, values: Tensor, scaling: float
    ) -> tuple[Float[Tensor, "n H S d"], Float[Tensor, "n H_kv S d"], Float[Tensor, "n S H_kv d"]]:
        """∂L/∂q, and ∂L/∂ of the suffix's own keys and values (the last S of T), from ∂L/∂z."""
        n, H, S, d = q.shape
        Hkv, T = keys.shape[1], keys.shape[2]
        grad_o = grad_z.transpose(1, 2).reshape(n, Hkv, H // Hkv * S, d)
        p = p.view(n, Hkv, H // Hkv * S, T)
        grad_values = p.transpose(-1, -2) @ grad_o  # [n, H_kv, T, d]
        grad_p = grad_o @ values.transpose(-1, -2)
        grad_scores = p * (grad_p - (grad_p * p).sum(-1, keepdim=True)) * scaling
        grad_q = (grad_scores @ keys).view(n, H, S, d)
        grad_k = (grad_scores.transpose(-1, -2) @ q.reshape(n, Hkv, H // Hkv * S, d))[:, :, T - S :]
        return grad_q, grad_k, grad_values[:, :, T - S :].transpose(1, 2)


class KernelOps:
    """The stages as one call each into ``headsteer/kernels/block.c`` (CPU, fp32; same layouts as :class:`TorchOps`).

    Every tensor handed to C is first bound to a name in its contiguous fp32 CPU form (:func:`_ready`), so that
    it outlives the call: a temporary made inside the call's argument list could be freed before C reads it.
    """

    def __init__(self, kernels: Kernels) -> None:
        self.kernels = kernels

    def norm(
        self, u: Tensor, scale: Tensor, eps: float, add: Tensor | None = None
    ) -> tuple[Tensor, Float[Tensor, "*rows 1"]]:
        u, scale, add = _ready(u, scale, add)
        out, r = torch.empty_like(u), u.new_empty(*u.shape[:-1], 1)
        rows, dim = u.numel() // u.shape[-1], u.shape[-1]
        self.kernels.rms_norm(
            pointer(u), pointer(scale), eps, rows, dim, pointer(add), pointer(out), pointer(r), _threads()
        )
        return out, r

    def norm_grad(self, u: Tensor, r: Tensor, scale: Tensor, g: Tensor, add: Tensor | None = None) -> Tensor:
        u, r, scale, g, add = _ready(u, r, scale, g, add)
        out = torch.empty_like(g)
        rows, dim = g.numel() // g.shape[-1], g.shape[-1]
        self.kernels.rms_norm_grad(
            pointer(u), pointer(r), pointer(scale), pointer(g), rows, dim, pointer(add), pointer(out), _threads()
        )
        return out

    def qk(self, u: Tensor, scale: Tensor | None, eps: float, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor | None]:
        n, S, heads, d = u.shape
        u, scale, cos, sin = _ready(u, scale, cos.expand(n, S, d), sin.expand(n, S, d))
        out = u.new_empty(n, heads, S, d)
        r = None if scale is None else u.new_empty(n, S, heads, 1)
        self.kernels.qk(
            pointer(u), pointer(scale), eps, pointer(cos), pointer(sin), n, S, heads, d, pointer(out),
            pointer(r), _threads(),
        )  # fmt: skip
        return out, r

    def qk_grad(self, g: Tensor, u: Tensor, r: Tensor | None, scale: Tensor | None, cos: Tensor, sin: Tensor) -> Tensor:
        n, heads, S, d = g.shape
        g, u, r, scale, cos, sin = _ready(g, u, r, scale, cos.expand(n, S, d), sin.expand(n, S, d))
        out = g.new_empty(n, S, heads, d)
        self.kernels.qk_grad(
            pointer(g), pointer(u), pointer(r), pointer(scale), pointer(cos), pointer(sin), n, S, heads, d,
            pointer(out), _threads(),
        )  # fmt: skip
        return out

    def attention(
        self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, scaling: float, delta: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        n, H, S, d = q.shape
        Hkv, T = keys.shape[1], keys.shape[2]
        mask = None if mask is None else mask.expand(n, H, S, T)
        q, keys, values, mask, delta = _ready(q, keys, values, mask, delta)
        p, z = q.new_empty(n, H, S, T), q.new_empty(n, S, H, d)
        self.kernels.attention(
            pointer(q), pointer(keys), pointer(values), pointer(mask), scaling, pointer(delta),
            n, H, Hkv, S, T, d, pointer(p), pointer(z), _threads(),
        )  # fmt: skip
        return p, z

    def attention_grad(
        self, grad_z: Tensor, p: Tensor, q: Tensor, keys: Tensor, values: Tensor, scaling: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, H, S, d = q.shape
        Hkv, T = keys.shape[1], keys.shape[2]
        grad_z, p, q, keys, values = _ready(grad_z, p, q, keys, values)
        grad_q, grad_k, grad_v = q.new_empty(n, H, S, d), q.new_empty(n, Hkv, S, d), q.new_empty(n, S, Hkv, d)
        self.kernels.attention_grad(
            pointer(grad_z), pointer(p), pointer(q), pointer(keys), pointer(values), scaling, n, H, Hkv, S, T, d,
            pointer(grad_q), pointer(grad_k), pointer(grad_v), _threads(),
        )  # fmt: skip
        return grad_q, grad_k, grad_v


def _ready(*tensors: Tensor | None) -> tuple:
    """Each tensor contiguous (None stays None), after checking that it is an fp32 CPU tensor as C reads it."""
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise TypeError(f"the block's C stages take fp32 CPU tensors, not {t.dtype} on {t.device}")
    return tuple(None if t is None else t.contiguous() for t in tensors)


Ops = TorchOps | KernelOps


def _threads() -> int:
    return torch.get_num_threads()


def ops_for(x: Tensor) -> Ops:
    """:class:`KernelOps` for fp32 CPU rows where the kernels loaded, else :class:`TorchOps`."""
    kernels = library()
    if isinstance(kernels, str) or x.device.type != "cpu" or x.dtype != torch.float32:
        return TorchOps()
    return KernelOps(kernels)
