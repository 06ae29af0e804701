"""A Gemma 3 block's hand-written suffix step: the layer's values and gradients, used only where nothing is hooked."""

import pytest
import torch

from headsteer.fitting import block_ops, linear_kernel, native_step
from headsteer.fitting.forward import PrefixCachedForward
from headsteer.fitting.from_layer import FromLayer
from headsteer.fitting.fused_block import LINEARS, FusedBlock, fused_blocks
from tests.conftest import NO_HOOKED
from tests.fitting.test_from_layer import PAIRS, loss_and_grad, prepared
from tests.fitting.test_linear_kernel import needs_kernels
from tests.helpers import tiny_bridge, tiny_hooked


@pytest.fixture(scope="module")
def gemma():
    return tiny_bridge("gemma3")


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def written_out(request):
    """Each tiny bridge whose layers are written out by hand."""
    return tiny_bridge(request.param)


def _steps(monkeypatch) -> list[int]:
    """Count the hand-written steps run."""
    calls: list[int] = []
    original = FusedBlock.__call__
    monkeypatch.setattr(FusedBlock, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    return calls


# How a hand-written step runs: torch's operations; its stages one C call each (its linear layers through the CPU
# kernel, which the fitter keeps for larger layers than these); the whole step as one C call each way.
PATHS = ["torch", pytest.param("stages", marks=needs_kernels), pytest.param("native", marks=needs_kernels)]


def _take(path: str, monkeypatch, linears: bool = True) -> list[bool]:
    """Set up ``path`` for the blocks built from here on; count the whole steps run in C. ``linears``: the stages'
    linear layers through the kernel (else torch's, for these small layers; the whole step in C runs them in C)."""
    if path == "torch":
        monkeypatch.setattr(block_ops, "library", lambda: "off (test)")
    elif linears:
        monkeypatch.setattr(linear_kernel, "MIN_WEIGHT_ELEMENTS", 1)
    if path != "native":
        monkeypatch.setattr(native_step, "library", lambda: "off (test)")
    native: list[bool] = []
    original = native_step.NativeStep.forward

    def counted(self, *args):
        done = original(self, *args)
        native.append(done is not None)
        return done

    monkeypatch.setattr(native_step.NativeStep, "forward", counted)
    return native


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_the_hand_written_step_gives_the_layers_values_and_gradients(written_out, loss, path, monkeypatch):
    """Δ at block 0: every block runs by hand, with the values and ∂L/∂Δ of autograd through the layers."""
    native = _take(path, monkeypatch)
    layers = torch.zeros(len(PAIRS), dtype=torch.long)
    fused, plain = PrefixCachedForward(), PrefixCachedForward()
    loss_and_grad(written_out, fused, layers, loss)
    loss_and_grad(written_out, plain, layers, loss)
    assert sorted(prepared(fused).fused) == [0, 1, 2]
    prepared(plain).fused = {}
    steps = _steps(monkeypatch)
    native.clear()
    got = loss_and_grad(written_out, fused, layers, loss, seed=1)
    assert len(steps) == 3, "not every block ran by hand"
    want = loss_and_grad(written_out, plain, layers, loss, seed=1)
    assert len(steps) == 3
    assert native == ([True] * 3 if path == "native" else [])
    for g, w in zip(got, want, strict=True):  # up to fp32 summation order (the kernel's differs from torch's)
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 if path == "torch" else 1e-5)


def test_a_users_hook_in_a_block_makes_it_run_as_the_model_runs_it(gemma, monkeypatch):
    layers = torch.zeros(len(PAIRS), dtype=torch.long)
    forward = PrefixCachedForward()
    loss_and_grad(gemma, forward, layers)
    seen: list[torch.Tensor] = []
    top = gemma.cfg.n_layers - 1
    gemma.blocks[top].mlp.hook_out.add_hook(lambda act, hook: seen.append(act.detach()))
    steps = _steps(monkeypatch)
    try:
        loss_and_grad(gemma, forward, layers)
    finally:
        gemma.blocks[top].mlp.hook_out.remove_hooks()
    assert len(seen) == 1 and len(steps) == top  # the blocks below the hooked one
    loss_and_grad(gemma, forward, layers)
    assert len(steps) == top + gemma.cfg.n_layers  # hook gone: the hooked block runs by hand again


def test_a_global_module_hook_makes_every_block_run_as_the_model_runs_it(gemma, monkeypatch):
    layers = torch.zeros(len(PAIRS), dtype=torch.long)
    forward = PrefixCachedForward()
    loss_and_grad(gemma, forward, layers)
    steps = _steps(monkeypatch)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    try:
        loss_and_grad(gemma, forward, layers)
    finally:
        handle.remove()
    assert steps == []


def test_a_hand_written_step_that_differs_from_the_layer_is_not_used(gemma, monkeypatch, recwarn):
    """The plan's replay catches a step that does not reproduce the layer, and runs the layers themselves."""
    right = FusedBlock.forward
    monkeypatch.setattr(FusedBlock, "forward", lambda self, x, *a: (lambda y, s: (y + 1e-2, s))(*right(self, x, *a)))
    layers = torch.zeros(len(PAIRS), dtype=torch.long)
    forward = PrefixCachedForward()
    loss_and_grad(gemma, forward, layers)
    plan = prepared(forward)
    assert isinstance(plan, FromLayer) and plan.fused == {} and plan.bare
    assert not [w for w in recwarn if "runs every block" in str(w.message)]


def test_only_fp32_layers_of_a_known_class_in_eval_mode_and_with_its_gate_get_one():
    assert fused_blocks(enumerate(tiny_bridge("gpt2").blocks)) == {}
    llama = tiny_bridge("llama")
    assert sorted(fused_blocks(enumerate(llama.blocks))) == list(range(llama.cfg.n_layers))
    llama.blocks[0]._modules["_original_component"].mlp._modules["_original_component"].act_fn = torch.nn.GELU()
    assert sorted(fused_blocks(enumerate(llama.blocks))) == list(range(1, llama.cfg.n_layers))
    assert fused_blocks(enumerate(tiny_bridge("gemma3", dtype=torch.bfloat16).blocks)) == {}
    model = tiny_bridge("gemma3")
    assert sorted(fused_blocks(enumerate(model.blocks))) == list(range(model.cfg.n_layers))
    model.blocks[1]._modules["_original_component"].train()
    assert sorted(fused_blocks(enumerate(model.blocks))) == [0, 2]


@NO_HOOKED
def test_a_hooked_transformers_blocks_get_none():
    assert fused_blocks(enumerate(tiny_hooked("gemma3").blocks)) == {}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_its_backward_is_the_chain_rule_of_its_forward(kind, path, monkeypatch):
    """∂L/∂x and ∂L/∂Δ of the hand-written backward against autograd through its forward in torch's operations,
    with a cache and a mask, and without Δ (its forward's linear layers in torch, for autograd)."""
    native = _take(path, monkeypatch, linears=False)
    model = tiny_bridge(kind)
    block = model.blocks[1]
    layer = block._modules["_original_component"]
    step = fused_blocks([(1, block)])[1]
    generator = torch.Generator().manual_seed(0)
    n, S, T, d = 3, 2, 5, layer.self_attn.head_dim
    x = torch.randn(n, S, model.cfg.d_model, generator=generator)
    angles = torch.randn(n, S, d // 2, generator=generator)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1) for f in (torch.cos, torch.sin))
    mask = torch.zeros(n, 1, S, T)
    mask[0, :, :, 0] = float("-inf")  # a padded prefix position
    mask[:, :, 0, -1] = float("-inf")  # causal within the suffix

    prefix = torch.randn(2, n, step.n_kv, T - S, d, generator=generator)

    class Layer:  # a cache's layer as transformers keeps it
        keys, values = prefix[0], prefix[1]

    class Cache:  # the prefix's keys and values, as a cache hands them back
        layers = [Layer()] * 2

        def update(self, keys, values, index):
            return torch.cat([prefix[0], keys], dim=-2), torch.cat([prefix[1], values], dim=-2)

    for delta in (torch.randn(n, model.cfg.n_heads, d, generator=generator), None):
        x_auto = x.clone().requires_grad_(True)
        delta_auto = None if delta is None else delta.clone().requires_grad_(True)
        with torch.enable_grad(), monkeypatch.context() as torch_only:  # torch's operations: autograd through them
            torch_only.setattr(block_ops, "library", lambda: "off (test)")
            torch_only.setattr(step, "native", None)
            y_auto, _ = step.forward(x_auto, delta_auto, cos, sin, mask, Cache())
        grad_y = torch.randn(y_auto.shape, generator=generator)
        inputs = (x_auto,) if delta_auto is None else (x_auto, delta_auto)
        want = torch.autograd.grad(y_auto, inputs, grad_y)
        with torch.no_grad():
            y, saved = step.forward(x, delta, cos, sin, mask, Cache())
            got = step.backward(grad_y, saved)[: len(inputs)]
        torch.testing.assert_close(y, y_auto.detach())
        for g, w in zip(got, want, strict=True):  # C and torch sum in different orders: ~3e-5 from fp64 on Llama's ∂x
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 if path == "torch" else 1e-5)
    assert native == ([True] * 2 if path == "native" else [])


@needs_kernels
def test_the_bf16_option_gives_hand_run_blocks_one_shared_bf16_copy_of_each_weight(gemma, monkeypatch):
    """Planned and checked in fp32, then each hand-run block's kernels read bf16 copies, one per weight for every
    plan; the loss and ∂L/∂Δ stay within bf16's rounding of fp32's."""
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT_ELEMENTS", 1)
    low, exact = PrefixCachedForward(bf16_weights=True), PrefixCachedForward()
    for layer in (0, 1):  # two plans: from block 0 and from block 1
        layers = torch.full((len(PAIRS),), layer)
        (_, got_loss, got_grad), (_, want_loss, want_grad) = (loss_and_grad(gemma, f, layers) for f in (low, exact))
        torch.testing.assert_close(got_loss, want_loss, rtol=2e-2, atol=2e-2)
        assert torch.nn.functional.cosine_similarity(got_grad.flatten(), want_grad.flatten(), dim=0) > 0.99
        assert not torch.equal(got_grad, want_grad)
    plans = [entry[1] for entry in low._prefixes.values()]
    assert len(plans) == 2 and all(isinstance(p, FromLayer) and p.fused for p in plans)
    for name in LINEARS:
        linears = [getattr(p.fused[2], name) for p in plans]
        assert len({linear.kernel_weight.data_ptr() for linear in linears}) == 1  # one copy for both plans
        # q, k and v (gate and up) in one copy, stacked; torch's path (more rows than the kernel takes) reads fp32
        weights = [layer.weight for layer in linears[0].layers] if name in ("qkv", "gate_up") else [linears[0].weight]
        assert all(w.dtype == torch.float32 for w in weights) and len(weights) == {"qkv": 3, "gate_up": 2}.get(name, 1)
        torch.testing.assert_close(linears[0].kernel_weight, torch.cat(weights).to(torch.bfloat16), rtol=0, atol=0)
