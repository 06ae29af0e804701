"""The block's stages in C (block.c) against torch's, shape for shape, and the choice between them."""

import pytest
import torch

from headsteer.fitting import block_ops
from headsteer.fitting.block_ops import KernelOps, TorchOps, ops_for
from headsteer.kernels import library
from tests.fitting.test_linear_kernel import needs_kernels

pytestmark = needs_kernels
TORCH = TorchOps()


@pytest.fixture(scope="module")
def kernel_ops() -> KernelOps:
    kernels = library()
    assert not isinstance(kernels, str)
    return KernelOps(kernels)


def close(got: torch.Tensor | None, want: torch.Tensor | None) -> None:
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # up to fp32 summation order


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 1, 40), (2, 5, 256), (300, 1, 640)])  # the last: enough rows for threads
def test_rms_norm_and_its_gradient(kernel_ops, shape, threads, monkeypatch):
    monkeypatch.setattr(block_ops, "_threads", lambda: threads)
    u, g, add = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    scale = 1 + torch.randn(shape[-1]) / 4
    for added in (None, add):
        got, got_r = kernel_ops.norm(u, scale, 1e-6, add=added)
        want, want_r = TORCH.norm(u, scale, 1e-6, add=added)
        close(got, want)
        close(got_r, want_r)
        close(kernel_ops.norm_grad(u, want_r, scale, g, add=added), TORCH.norm_grad(u, want_r, scale, g, add=added))


@pytest.mark.parametrize("normed", [True, False])
@pytest.mark.parametrize(("n", "S", "heads", "d"), [(3, 1, 4, 16), (2, 3, 1, 8), (200, 2, 2, 64)])
def test_per_head_norm_and_rotary_and_its_gradient(kernel_ops, n, S, heads, d, normed):
    u, g = torch.randn(n, S, heads, d), torch.randn(n, heads, S, d)
    angles = torch.randn(n, S, d // 2).repeat(1, 1, 2)
    cos, sin = angles.cos(), angles.sin()
    scale = 1 + torch.randn(d) / 4 if normed else None
    got, got_r = kernel_ops.qk(u, scale, 1e-6, cos, sin)
    want, want_r = TORCH.qk(u, scale, 1e-6, cos, sin)
    close(got, want)
    close(got_r, want_r)
    close(kernel_ops.qk_grad(g, u, want_r, scale, cos, sin), TORCH.qk_grad(g, u, want_r, scale, cos, sin))
    # cos and sin shared by every row, as a model with one set of positions gives them
    close(kernel_ops.qk(u, scale, 1e-6, cos[:1], sin[:1])[0], TORCH.qk(u, scale, 1e-6, cos[:1], sin[:1])[0])


@pytest.mark.parametrize("with_delta", [True, False])
@pytest.mark.parametrize("mask_shape", [None, "rows", "heads"])
@pytest.mark.parametrize(
    ("n", "H", "Hkv", "S", "T", "d"), [(3, 4, 1, 1, 7, 16), (2, 4, 2, 3, 9, 8), (64, 2, 2, 2, 12, 64)]
)
def test_attention_and_its_gradient(kernel_ops, n, H, Hkv, S, T, d, mask_shape, with_delta):
    q, keys, values = torch.randn(n, H, S, d), torch.randn(n, Hkv, T, d), torch.randn(n, Hkv, T, d)
    mask = None
    if mask_shape is not None:  # a causal suffix after a prefix with two positions padded out in every other row
        mask = torch.zeros(n, 1 if mask_shape == "rows" else H, S, T)
        mask[::2, ..., :2] = float("-inf")
        mask[..., T - S :] = mask[..., T - S :].masked_fill(torch.ones(S, S).triu(1).bool(), float("-inf"))
        if mask_shape == "heads":
            mask[:, -1, :, 2] = -3.0  # a mask that differs between heads
    delta = torch.randn(n, H, d) if with_delta else None
    got_p, got_z = kernel_ops.attention(q, keys, values, mask, 0.3, delta)
    want_p, want_z = TORCH.attention(q, keys, values, mask, 0.3, delta)
    close(got_p, want_p)
    close(got_z, want_z)
    grad_z = torch.randn(n, S, H, d)
    got = kernel_ops.attention_grad(grad_z, want_p, q, keys, values, 0.3)
    want = TORCH.attention_grad(grad_z, want_p, q, keys, values, 0.3)
    for g, w in zip(got, want, strict=True):
        close(g, w)


def test_the_c_stages_only_for_fp32_cpu_rows_with_the_kernels_loaded(monkeypatch):
    assert isinstance(ops_for(torch.zeros(2, 3)), KernelOps)
    assert isinstance(ops_for(torch.zeros(2, 3, dtype=torch.float64)), TorchOps)
    assert isinstance(ops_for(torch.zeros(2, 3, device="meta")), TorchOps)
    monkeypatch.setattr(block_ops, "library", lambda: "off (test)")
    assert isinstance(ops_for(torch.zeros(2, 3)), TorchOps)


def test_strided_inputs_are_read_as_torch_reads_them(kernel_ops):
    """Views that are not contiguous (a transposed residual, a sliced cache) give torch's results."""
    u = torch.randn(640, 6).T  # [6, 640], strided
    scale, g = 1 + torch.randn(640) / 4, torch.randn(6, 640)
    r = TORCH.norm(u, scale, 1e-6)[1]
    close(kernel_ops.norm(u, scale, 1e-6)[0], TORCH.norm(u, scale, 1e-6)[0])
    close(kernel_ops.norm_grad(u, r, scale, g, add=u), TORCH.norm_grad(u, r, scale, g, add=u))
    q, cache = torch.randn(3, 4, 1, 16), torch.randn(2, 3, 1, 20, 16)[..., 1:9, :]  # keys and values: a slice
    grad_z = torch.randn(3, 4, 1, 16).transpose(1, 2)
    p = TORCH.attention(q, cache[0], cache[1], None, 0.5, None)[0]
    close(
        kernel_ops.attention(q, cache[0], cache[1], None, 0.5, None)[1], TORCH.attention(q, *cache, None, 0.5, None)[1]
    )
    for got, want in zip(
        kernel_ops.attention_grad(grad_z, p, q, cache[0], cache[1], 0.5),
        TORCH.attention_grad(grad_z, p, q, cache[0], cache[1], 0.5),
        strict=True,
    ):
        close(got, want)


def test_other_dtypes_are_refused_by_name(kernel_ops):
    with pytest.raises(TypeError, match="fp32 CPU tensors, not torch.float64"):
        kernel_ops.norm(torch.randn(2, 8, dtype=torch.float64), torch.ones(8), 1e-6)
