"""The sequence loss: the teacher-forced NLL of every real answer position, padding never scored."""

import pytest
import torch

from headsteer.fitting.losses import sequence_nll
from headsteer.fitting.unembed import FinalHidden

ROWS, POSITIONS, D_MODEL, VOCAB = 3, 4, 8, 50
LENGTHS = [1, 4, 2]  # row i's answer (and stop) fills its first LENGTHS[i] positions; the rest is padding


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(ROWS, POSITIONS, D_MODEL, generator=generator)
    weight = torch.randn(VOCAB, D_MODEL, generator=generator)
    targets = torch.randint(0, VOCAB, (ROWS, POSITIONS), generator=generator)
    mask = torch.arange(POSITIONS)[None, :] < torch.tensor(LENGTHS)[:, None]
    return hidden, weight, targets, mask


def by_hand(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ_j −log softmax(h_ij Wᵀ)[y_ij] over each row's real positions, one position at a time."""
    return torch.stack(
        [
            sum(-torch.log_softmax(hidden[i, j] @ weight.T, -1)[targets[i, j]] for j in range(LENGTHS[i]))
            for i in range(ROWS)
        ]
    )


@pytest.mark.parametrize("form", ["final_hidden", "logits"])
def test_the_sequence_nll_sums_each_rows_real_positions(form):
    hidden, weight, targets, mask = padded_batch()
    scored = FinalHidden(hidden, weight) if form == "final_hidden" else hidden @ weight.T
    torch.testing.assert_close(sequence_nll(scored, targets, mask), by_hand(hidden, weight, targets))


@pytest.mark.parametrize("form", ["final_hidden", "logits"])
def test_padding_never_reaches_the_unembedding(form):
    """NaN at every padded position: a loss that scored padding (even times a zero mask) would be NaN."""
    hidden, weight, targets, mask = padded_batch()
    hidden[~mask] = float("nan")
    hidden.requires_grad_(True)
    scored = FinalHidden(hidden, weight) if form == "final_hidden" else hidden @ weight.T
    loss = sequence_nll(scored, targets, mask)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert hidden.grad is not None
    assert torch.isfinite(hidden.grad[mask]).all() and (hidden.grad[mask] != 0).any()
    assert (hidden.grad[~mask] == 0).all()
