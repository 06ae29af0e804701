"""The linear layers' CPU kernel: F.linear's values and input gradients, only where it applies, layers given back."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from headsteer import kernels
from headsteer.fitting import linear_kernel, native_step
from headsteer.fitting.forward import PrefixCachedForward
from headsteer.fitting.linear_kernel import FrozenLinear, LinearGroup, plain_linears, skinny_linears

needs_kernels = pytest.mark.skipif(kernels.status() != "on", reason=f"kernels {kernels.status()}")


@pytest.fixture(autouse=True)
def small_layers_too(monkeypatch):
    """The kernel for every layer size here, so that small layers test its tails (the fitter skips tiny ones)."""
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT_ELEMENTS", 1)


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _value_and_grad(layer: nn.Module, x: torch.Tensor, kernel: bool):
    x = x.clone().requires_grad_(True)
    with skinny_linears(plain_linears([layer]) if kernel else ()):
        y = layer(x)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    (grad,) = torch.autograd.grad((y * upstream).sum(), x)
    return y.detach(), grad


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("shape", "d_in", "d_out"),
    [
        ((1,), 64, 256),
        ((3,), 37, 63),
        ((10, 1), 640, 1024),
        ((2, 3, 2), 130, 129),
        ((32,), 48, 700),
        ((4,), 16, 1),
        ((10,), 1100, 70),
    ],
    ids=["one row", "short tails", "ten rows", "three leading dims", "most rows", "one output", "long rows"],
)
def test_the_kernel_gives_f_linears_values_and_input_gradient(shape, d_in, d_out, bias, threads, monkeypatch):
    """Every tail (rows past a tile, columns past a vector, outputs past a block or a thread's share) agrees."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    torch.manual_seed(d_in * d_out)
    layer = _frozen(nn.Linear(d_in, d_out, bias=bias))
    x = torch.randn(*shape, d_in)
    calls = []
    original = linear_kernel.kernel_forward  # the product of a layer run as the model runs it, or by hand
    monkeypatch.setattr(linear_kernel, "kernel_forward", lambda *a: calls.append(1) or original(*a))
    got = _value_and_grad(layer, x, kernel=True)
    assert calls, "the kernel was not used"
    want = _value_and_grad(layer, x, kernel=False)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-5)


class _Scaled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


@needs_kernels
@pytest.mark.parametrize(
    "case",
    [
        "too many rows",
        "fp64",
        "a weight that needs a gradient",
        "a transposed weight",
        "a subclass",
        "a replaced forward",
        "a small weight",
    ],
)
def test_the_kernel_steps_aside_where_it_does_not_apply(case, monkeypatch):
    """F.linear runs (the same values as without the context) wherever the kernel would not be exact or asked."""
    layer, x = _frozen(nn.Linear(16, 24)), torch.randn(4, 16)
    if case == "too many rows":
        x = torch.randn(kernels.library().linear_max_rows + 1, 16)
    elif case == "fp64":
        layer, x = layer.double(), x.double()
    elif case == "a weight that needs a gradient":  # LoRA-style training of the layer itself
        layer.weight.requires_grad_(True)
    elif case == "a transposed weight":
        layer.weight = nn.Parameter(torch.randn(16, 24).T, requires_grad=False)
    elif case == "a subclass":
        layer = _frozen(_Scaled(16, 24))
    elif case == "a replaced forward":
        layer.forward = lambda x: nn.functional.linear(x, layer.weight, layer.bias) + 1  # e.g. accelerate's hooks
    else:  # torch's GEMM is as fast below the threshold
        monkeypatch.setattr(linear_kernel, "MIN_WEIGHT_ELEMENTS", layer.weight.numel() + 1)
    monkeypatch.setattr(linear_kernel._SkinnyLinear, "apply", lambda *a: pytest.fail("the kernel ran"))
    want = layer(x)
    with skinny_linears(plain_linears([layer])):
        got = layer(x)
    torch.testing.assert_close(got, want)


def test_plain_linears_finds_each_plain_linear_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared, _Scaled(3, 3), nn.Linear(3, 2)))
    found = plain_linears([model, model[2]])
    assert [id(m) for m in found] == [id(shared), id(model[2][2])]


@needs_kernels
def test_each_layer_gets_its_own_forward_back_even_after_an_error():
    model = _frozen(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))
    with pytest.raises(RuntimeError, match="inside"), skinny_linears(plain_linears([model])):
        assert all("forward" in vars(m) for m in model), "the kernel was not put in place"
        raise RuntimeError("inside")
    assert not any("forward" in vars(m) for m in model)


def test_switched_off_nothing_is_touched(monkeypatch):
    monkeypatch.setattr(linear_kernel, "library", lambda: "off (switched off)")
    layer = nn.Linear(8, 8)
    with skinny_linears(plain_linears([layer])):
        assert "forward" not in vars(layer)


@needs_kernels
@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_the_fitters_suffix_gives_the_same_values_and_gradients_with_the_kernel(any_model, loss, monkeypatch, request):
    """Rows from their own layer (every layer, in no order), as a fit step runs them: kernel on and off agree."""
    from tests.fitting.test_from_layer import loss_and_grad, per_row_layers

    layers = per_row_layers(any_model)
    for p in any_model.parameters():  # as in a fit (and the module's own copy of the model: nothing else sees it)
        monkeypatch.setattr(p, "requires_grad", False)
    calls = []
    original = linear_kernel.kernel_forward  # the product of a layer run as the model runs it, or by hand
    monkeypatch.setattr(linear_kernel, "kernel_forward", lambda *a: calls.append(1) or original(*a))
    whole = native_step.NativeStep.forward  # or a hand-run block's whole step in C, its linear layers with it
    monkeypatch.setattr(native_step.NativeStep, "forward", lambda *a: (lambda r: calls.append(r) or r)(whole(*a)))
    got = loss_and_grad(any_model, PrefixCachedForward(), layers, loss)
    # HookedTransformer's projections are its own parameters, and GPT-2's bridge runs its fused Conv1D.
    assert any(calls) == (request.node.callspec.params["any_model"] in (("bridge", "gemma3"), ("bridge", "llama")))
    monkeypatch.setattr(linear_kernel, "library", lambda: "off (switched off)")
    monkeypatch.setattr(native_step, "library", lambda: "off (switched off)")
    want = loss_and_grad(any_model, PrefixCachedForward(), layers, loss)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


PAST = -1  # as a row count: one more row than the kernel takes (its limit depends on the CPU)


def _rows(rows: int, bf16: bool = True) -> int:
    loaded = kernels.library()
    assert not isinstance(loaded, str)
    return rows if rows != PAST else (loaded.linear_max_rows_bf16 if bf16 else loaded.linear_max_rows) + 1


@needs_kernels
@pytest.mark.parametrize("rows", [1, 10, 40, PAST])  # PAST: more rows than the kernel takes, torch's product
def test_a_frozen_linear_gives_torchs_product_and_input_gradient(rows):
    rows = _rows(rows, bf16=False)
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 33, generator=generator), torch.randn(48, generator=generator)
    layer = FrozenLinear(weight, bias)
    assert layer.kernels is not None
    x, grad_y = torch.randn(rows, 33, generator=generator), torch.randn(rows, 48, generator=generator)
    torch.testing.assert_close(layer(x), F.linear(x, weight, bias))
    torch.testing.assert_close(layer.input_grad(grad_y), grad_y @ weight)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 10, 40, PAST])  # PAST: torch's product in fp32
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d_in", [130, 1100])  # 1100: ten rows longer than L1 holds
def test_a_frozen_linear_with_a_bf16_copy_multiplies_the_rounded_weight_in_fp32(rows, threads, d_in, monkeypatch):
    """The kernel reads the bf16 copy, each element widened exactly: fp32 products of the rounded weight."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    rows, limit = _rows(rows), kernels.library().linear_max_rows_bf16
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(200, d_in, generator=generator), torch.randn(200, generator=generator)
    layer = FrozenLinear(weight, None).in_bf16(lambda ws: torch.cat(ws).to(torch.bfloat16))
    assert layer.kernel_weight.dtype == torch.bfloat16 and layer.weight is weight
    x, grad_y = torch.randn(rows, d_in, generator=generator), torch.randn(rows, 200, generator=generator)
    used = weight.to(torch.bfloat16).float() if rows <= limit else weight
    assert not torch.equal(used @ x[0], weight @ x[0]) or rows > limit  # the rounding shows
    tolerance = 2e-5 * (d_in / 130) ** 0.5  # fp32 summation order: the outputs grow as √d_in
    torch.testing.assert_close(layer(x), F.linear(x, used), rtol=1e-5, atol=tolerance)
    torch.testing.assert_close(layer.input_grad(grad_y), grad_y @ used, rtol=1e-5, atol=tolerance)
    with pytest.raises(ValueError, match=f"bf16 copy of the \\(200, {d_in}\\) weight"):
        FrozenLinear(weight, bias, weight.to(torch.float16))
    with pytest.raises(ValueError, match="bf16 copy"):
        FrozenLinear(weight, bias, weight[:100].to(torch.bfloat16))


def _stacked_bf16(weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat(weights).to(torch.bfloat16)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 10, PAST])  # PAST: more rows than the kernel takes, each layer in fp32
@pytest.mark.parametrize("bias", [False, True])
def test_a_linear_group_in_bf16_is_its_layers_on_the_rounded_weights_in_one_stacked_copy(rows, bias, monkeypatch):
    """q, k and v (or gate and up) read one stacked bf16 copy in one kernel call each way; the outputs and the
    summed input gradient are each layer's own on the rounded weights; a bias only on some layers counts as zero
    on the others; past the kernel's rows, each layer runs in fp32."""
    rows, limit = _rows(rows), kernels.library().linear_max_rows_bf16
    calls: list[torch.dtype] = []  # the weight each kernel call reads
    for name in ("kernel_forward", "kernel_input_grad"):
        original = getattr(linear_kernel, name)
        monkeypatch.setattr(linear_kernel, name, lambda *a, f=original: calls.append(a[1].dtype) or f(*a))
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(n, 70, generator=generator) for n in (64, 16, 16)]
    biases = [torch.randn(64, generator=generator) if bias else None, None, None]
    group = LinearGroup(tuple(FrozenLinear(w, b) for w, b in zip(weights, biases, strict=True)))
    stacked = group.in_bf16(_stacked_bf16)
    assert stacked.kernel_weight is not None and stacked.kernel_weight.shape == (96, 70)
    x = torch.randn(rows, 70, generator=generator)
    grads = [torch.randn(rows, w.shape[0], generator=generator) for w in weights]
    used = [w.to(torch.bfloat16).float() if rows <= limit else w for w in weights]
    for got_group in (group, stacked):
        expect = used if got_group is stacked else weights
        got = got_group(x)
        assert [tuple(y.shape) for y in got] == [(rows, w.shape[0]) for w in weights]
        for y, w, b in zip(got, expect, biases, strict=True):
            torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        want = sum(g @ w for g, w in zip(grads, expect, strict=True))
        torch.testing.assert_close(got_group.input_grad(*grads), want, rtol=1e-5, atol=1e-5)
        if got_group is stacked:  # one call each way on the stacked copy; past the kernel's rows, none
            assert calls == ([torch.bfloat16] * 2 if rows <= limit else [])
        calls.clear()


@needs_kernels
def test_a_linear_group_needs_one_input_width_and_stacks_only_what_the_kernel_takes(monkeypatch):
    generator = torch.Generator().manual_seed(4)
    with pytest.raises(ValueError, match="one width, got \\[3, 4\\]"):
        LinearGroup((FrozenLinear(torch.randn(2, 3), None), FrozenLinear(torch.randn(2, 4), None)))
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT_ELEMENTS", 81)  # the two together: 80 elements
    layers = tuple(FrozenLinear(torch.randn(8, 5, generator=generator), None) for _ in range(2))
    small = LinearGroup(layers).in_bf16(_stacked_bf16)
    assert small.kernel_weight is None and all(layer.kernel_weight.dtype == torch.float32 for layer in small.layers)
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT_ELEMENTS", 80)
    assert LinearGroup(layers).in_bf16(_stacked_bf16).kernel_weight is not None
