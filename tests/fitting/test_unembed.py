"""The one-pass unembedding NLL equals log-softmax's value and gradient."""

import pytest
import torch

from headsteer.fitting import unembed
from headsteer.fitting.unembed import FinalHidden


@pytest.mark.parametrize("softcap", [None, 2.0], ids=["uncapped", "soft-capped"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_streamed_nll_matches_log_softmax(with_bias, softcap, monkeypatch):
    """Value and gradient equal autograd through log_softmax(l), or log_softmax(c·tanh(l/c)) when soft-capped."""
    monkeypatch.setattr(unembed, "CHUNK", 7)  # several blocks, the last one short
    g = torch.Generator().manual_seed(0)
    weight = 3 * torch.randn(50, 6, generator=g, dtype=torch.float64)  # logits of several c: the cap bends them
    bias = torch.randn(50, generator=g, dtype=torch.float64) if with_bias else None
    hidden = torch.randn(3, 2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 2), generator=g)

    got = FinalHidden(hidden, weight, bias, softcap).token_nll(targets)
    (got_grad,) = torch.autograd.grad((got * torch.arange(1.0, 7.0).view(3, 2)).sum(), hidden)

    logits = torch.nn.functional.linear(hidden, weight, bias)
    if softcap is not None:
        assert logits.abs().max() > 3 * softcap  # the test covers the cap's flat part, not only its linear one
        logits = softcap * torch.tanh(logits / softcap)
    ref = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    (ref_grad,) = torch.autograd.grad((ref * torch.arange(1.0, 7.0).view(3, 2)).sum(), hidden)
    torch.testing.assert_close(got.double(), ref)
    torch.testing.assert_close(got_grad.double(), ref_grad)


def test_a_half_precision_unembedding_is_read_in_fp32():
    """bf16 hidden states and W: the NLL is accumulated in fp32 and matches fp32 log_softmax of the same numbers."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(40, 8, generator=g).bfloat16()
    hidden = torch.randn(4, 1, 8, generator=g).bfloat16()
    targets = torch.randint(0, 40, (4, 1), generator=g)
    got = FinalHidden(hidden, weight, softcap=5.0).token_nll(targets)
    logits = 5.0 * torch.tanh(hidden.float() @ weight.float().T / 5.0)
    ref = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("softcap", [None, 1.5])
def test_option_logits_and_full_logits_agree(softcap):
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    scored = FinalHidden(torch.randn(2, 1, 4, generator=g), weight, bias, softcap)
    ids = torch.tensor([[3, 5], [0, 19]])
    torch.testing.assert_close(scored.logits_of(ids), scored.logits()[:, 0].gather(-1, ids))
    if softcap is not None:
        assert scored.logits().abs().max() < softcap


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_the_bf16_option_stays_close_to_fp32(monkeypatch, softcap):
    """Low precision: a bf16 copy of W, fp32 softmax sums: within bf16's rounding of fp32; on a CPU, fp32 products of
    the rounded W (the torch loop widens each chunk, as the fused kernel widens each element)."""
    monkeypatch.setattr(unembed, "CHUNK", 7)
    g = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(50, 16, generator=g) * 0.5, torch.randn(50, generator=g)
    hidden = torch.randn(4, 1, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (4, 1), generator=g)
    exact = FinalHidden(hidden, weight, bias, softcap).token_nll(targets)
    (exact_grad,) = torch.autograd.grad(exact.sum(), hidden)
    low = FinalHidden(hidden, weight.bfloat16(), bias, softcap, low_precision=True).token_nll(targets)
    (low_grad,) = torch.autograd.grad(low.sum(), hidden)
    assert low.dtype == torch.float32 and low_grad.dtype == torch.float32
    torch.testing.assert_close(low, exact, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(low_grad, exact_grad, rtol=2e-2, atol=2e-2)
    assert not torch.equal(low, exact), "the option really runs in bf16"
    rounded = FinalHidden(hidden, weight.bfloat16().float(), bias, softcap).token_nll(targets)
    torch.testing.assert_close(low, rounded, rtol=1e-5, atol=1e-5)
