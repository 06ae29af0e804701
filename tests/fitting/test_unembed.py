"""The one-pass unembedding NLL equals log-softmax's value and gradient."""

import pytest
import torch

from headsteer.fitting import unembed
from headsteer.fitting.unembed import FinalHidden


@pytest.mark.parametrize("with_bias", [False, True])
def test_streamed_nll_matches_log_softmax(with_bias, monkeypatch):
    monkeypatch.setattr(unembed, "CHUNK", 7)  # several blocks, the last one short
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(50, generator=g, dtype=torch.float64) if with_bias else None
    hidden = torch.randn(3, 2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 2), generator=g)

    got = FinalHidden(hidden, weight, bias).token_nll(targets)
    (got_grad,) = torch.autograd.grad((got * torch.arange(1.0, 7.0).view(3, 2)).sum(), hidden)

    logits = torch.nn.functional.linear(hidden, weight, bias)
    ref = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    (ref_grad,) = torch.autograd.grad((ref * torch.arange(1.0, 7.0).view(3, 2)).sum(), hidden)
    torch.testing.assert_close(got.double(), ref)
    torch.testing.assert_close(got_grad.double(), ref_grad)


def test_option_logits_and_full_logits_agree():
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    scored = FinalHidden(torch.randn(2, 1, 4, generator=g), weight, bias)
    ids = torch.tensor([[3, 5], [0, 19]])
    torch.testing.assert_close(scored.logits_of(ids), scored.logits()[:, 0].gather(-1, ids))
