"""A hand-run block's whole step as one C call each way: the stages' values and gradients, and where it steps aside."""

import copy
import dataclasses

import pytest
import torch

from headsteer.fitting import linear_kernel
from headsteer.fitting.fused_block import FusedBlock, fused_blocks
from headsteer.fitting.native_step import native_step
from tests.fitting.test_linear_kernel import needs_kernels
from tests.helpers import tiny_bridge

pytestmark = needs_kernels


class Layer:  # a cache's layer as transformers keeps it
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


class Cache:  # the prefix's keys and values of block 1, as the stages read them (update) and the C call (layers)
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.layers = [Layer(keys, values)] * 2

    def update(self, keys, values, index):
        prefix = self.layers[index]
        return torch.cat([prefix.keys, keys], dim=-2), torch.cat([prefix.values, values], dim=-2)


def _block(kind: str, bf16: bool, monkeypatch) -> FusedBlock:
    """Block 1 of a tiny ``kind`` bridge, its linear layers through the kernel (these are below its usual size)."""
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT_ELEMENTS", 1)
    model = tiny_bridge(kind)
    step = fused_blocks([(1, model.blocks[1])])[1]
    if bf16:  # q, k, v stacked in one bf16 copy, gate and up in another: each group one product
        step = step.in_bf16(lambda weights: torch.cat([w.detach() for w in weights]).to(torch.bfloat16))
    return step


def _inputs(step: FusedBlock, n: int, S: int, T: int, seed: int = 0) -> tuple:
    """x, Δ, cos, sin, a mask (a padded prefix position, causal within the suffix) and a cache for n rows."""
    generator = torch.Generator().manual_seed(seed)
    d = step.head_dim
    x = torch.randn(n, S, step.o.weight.shape[0], generator=generator)
    angles = torch.randn(1, S, d // 2, generator=generator)  # one row of positions for all, as a model gives them
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1) for f in (torch.cos, torch.sin))
    mask = torch.zeros(n, 1, S, T)
    mask[0, :, :, 0] = float("-inf")
    mask[:, :, :, T - S :] = torch.triu(torch.full((S, S), float("-inf")), diagonal=1)
    keys, values = torch.randn(2, n, step.n_kv, T - S, d, generator=generator)
    delta = torch.randn(n, step.n_heads, d, generator=generator)
    return x, delta, cos, sin, mask, Cache(keys, values)


@pytest.mark.parametrize("bf16", [False, True], ids=["layer-by-layer", "stacked-bf16"])
@pytest.mark.parametrize("kind", ["gemma3", "llama"])
@pytest.mark.parametrize("with_delta", [True, False])
def test_the_whole_step_gives_the_stages_values_and_gradients(kind, bf16, with_delta, monkeypatch):
    step = _block(kind, bf16, monkeypatch)
    assert step.native is not None
    stages = copy.copy(step)
    stages.native = None
    x, delta, cos, sin, mask, cache = _inputs(step, n=3, S=4, T=9)
    delta = delta if with_delta else None
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y, saved = step.forward(x, delta, cos, sin, mask, cache)
    assert set(saved) == {"native"}, "the C call did not run"
    y_stages, saved_stages = stages.forward(x, delta, cos, sin, mask, cache)
    torch.testing.assert_close(y, y_stages, rtol=1e-5, atol=1e-5)
    for got, want in zip(step.backward(grad_y, saved), stages.backward(grad_y, saved_stages), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_call_it_does_not_fit_runs_the_stages(monkeypatch):
    """More rows than the kernel takes, a cache without its layers' keys, a mask of another length: the stages run."""
    step = _block("gemma3", bf16=False, monkeypatch=monkeypatch)
    assert step.native is not None
    x, delta, cos, sin, mask, cache = _inputs(step, n=3, S=4, T=9)
    assert step.native.forward(x, delta, cos, sin, mask, cache) is not None
    rows = step.native.max_rows // 4 + 1  # 4 suffix positions each
    many = _inputs(step, n=rows, S=4, T=9)
    assert step.native.forward(*many) is None
    assert set(step.forward(*many)[1]) != {"native"}

    class Updating:  # only the update of a cache
        update = Cache.update

    assert step.native.forward(x, delta, cos, sin, mask, Updating()) is None
    assert step.native.forward(x, delta, cos, sin, mask[..., 1:], cache) is None
    assert step.native.forward(x.double(), delta, cos, sin, mask, cache) is None


def test_a_gate_the_c_does_not_compute_gets_no_whole_step(monkeypatch):
    step = _block("llama", bf16=False, monkeypatch=monkeypatch)
    assert native_step(step) is not None
    monkeypatch.setattr(step, "architecture", dataclasses.replace(step.architecture, gate="relu"))
    assert native_step(step) is None
