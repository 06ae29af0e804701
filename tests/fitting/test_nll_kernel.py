"""The fused CPU kernel of the streamed NLL agrees with the torch loop, and steps aside where it does not apply."""

import pytest
import torch

from headsteer import kernels
from headsteer.fitting import nll_kernel, unembed
from headsteer.fitting.unembed import FinalHidden

needs_kernel = pytest.mark.skipif(kernels.status() != "on", reason=f"kernels {kernels.status()}")


def _state(m, z, s):
    """(logsumexp, its gradient): what the online-softmax state stands for."""
    return m + z.log(), s / z[:, None]


@needs_kernel
@pytest.mark.parametrize("low_precision", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(
    ("rows", "width", "vocab"),
    [(1, 64, 1000), (3, 37, 63), (10, 130, 5003), (11, 640, 129), (64, 48, 700), (256, 40, 300)],
    ids=["one row", "short tails", "ten rows", "two row groups", "most fp32 rows", "most bf16 rows"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_the_torch_loop(rows, width, vocab, with_bias, low_precision, threads, monkeypatch):
    """Every tail (rows past a tile, columns past a vector, vocabulary past a block or a share) agrees.

    With bf16 weights the kernel's products are fp32 products of the widened weights, so it is compared
    with the torch loop on the same weights in fp32."""
    if rows > 64 and not low_precision:
        pytest.skip("more rows than the kernel takes with fp32 weights")
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = torch.Generator().manual_seed(rows * vocab)
    weight = 2 * torch.randn(vocab, width, generator=g) / width**0.5
    weight = weight.bfloat16() if low_precision else weight
    bias = torch.randn(vocab, generator=g) if with_bias else None
    hidden = 3 * torch.randn(rows, width, generator=g)

    got = nll_kernel.online_softmax(hidden, weight, bias, low_precision)
    assert got is not None
    want = unembed._online_softmax(hidden, weight.float(), bias, None, False)
    for got_part, want_part in zip(_state(*got), _state(*want), strict=True):
        torch.testing.assert_close(got_part, want_part, rtol=2e-5, atol=2e-5)


@needs_kernel
def test_the_fitters_nll_and_gradient_are_the_same_with_and_without_the_kernel(monkeypatch):
    """Through FinalHidden.token_nll (what the fitter differentiates): value and gradient as the torch loop's."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(3000, 96, generator=g) / 4
    hidden = torch.randn(5, 2, 96, generator=g, requires_grad=True)
    targets = torch.randint(0, 3000, (5, 2), generator=g)

    def nll_and_grad():
        nll = FinalHidden(hidden, weight).token_nll(targets)
        return nll.detach(), torch.autograd.grad(nll.sum(), hidden)[0]

    calls = []
    original = nll_kernel.online_softmax
    monkeypatch.setattr(unembed, "online_softmax", lambda *a: calls.append(1) or original(*a))
    fused = nll_and_grad()
    assert calls, "the kernel was not used"
    monkeypatch.setattr(unembed, "online_softmax", lambda *a: None)
    looped = nll_and_grad()
    for a, b in zip(fused, looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize(
    "case",
    [
        "too many rows",
        "too many rows for bf16",
        "fp64 hidden",
        "a transposed weight",
        "fp16 weight",
        "bf16 weight without the option",
    ],
)
def test_the_kernel_steps_aside_where_it_does_not_apply(case):
    """None (the torch loop runs) outside what the kernel computes exactly."""
    hidden, weight, low_precision = torch.randn(4, 16), torch.randn(100, 16), False
    if case == "too many rows":
        hidden = torch.randn(kernels.library().nll_max_rows + 1, 16)
    elif case == "too many rows for bf16":
        hidden, weight, low_precision = torch.randn(257, 16), weight.bfloat16(), True
    elif case == "fp64 hidden":
        hidden = hidden.double()
    elif case == "a transposed weight":  # HookedTransformer's W_U.T: a view, columns not contiguous
        weight = torch.randn(16, 100).T
    elif case == "fp16 weight":
        weight, low_precision = weight.half(), True
    else:
        weight = weight.bfloat16()
    assert nll_kernel.online_softmax(hidden, weight, None, low_precision) is None
    assert nll_kernel.online_softmax(torch.randn(4, 16), torch.randn(100, 16), None, False) is not None


def test_switched_off_the_torch_loop_runs(monkeypatch):
    monkeypatch.setattr(nll_kernel, "library", lambda: "off (switched off)")
    assert nll_kernel.online_softmax(torch.randn(2, 16), torch.randn(100, 16), None, False) is None
    hidden, weight = torch.randn(2, 1, 16, requires_grad=True), torch.randn(100, 16)
    nll = FinalHidden(hidden, weight).token_nll(torch.tensor([[3], [5]]))
    ref = -torch.log_softmax(hidden @ weight.T, -1)[:, 0, [3, 5]].diagonal()
    torch.testing.assert_close(nll[:, 0], ref)
