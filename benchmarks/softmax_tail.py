"""Could the NLL's gradient skip the vocabulary where the softmax is negligible? How heavy Gemma's tail is.

    python benchmarks/softmax_tail.py [--tasks antonym english-french country-currency] [--layer 4]

The NLL's gradient with respect to a final hidden state h is ``Σ_v p_v W_v − W_target``: a second
product as large as the logits' (about a quarter of a fit step). Where every row's p_v is below some
τ, W_v's term could be skipped (the "gradient filtering" of Cut Cross-Entropy, Wijmans et al. 2024),
at the cost of the probability mass dropped. For the 10 training prompts of each task (seed 0, the
``qa`` template), with Δ = 0 and with a Δ fitted at ``--layer`` (first-token loss, the default
``FitConfig`` otherwise), it prints, for thresholds τ, the share of the vocabulary kept (entries
where some row has p_v ≥ τ; and 64-row blocks of W, the kernel's unit, where some entry is kept) and
the largest probability mass a row would drop, against fp32's 2^-24 ≈ 6e-8.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

import headsteer as hs
from headsteer.fitting.forward import build_prefix, run_suffix
from headsteer.prompts import encode_targets

BLOCK = 64  # vocabulary rows per block of headsteer/kernels/nll.c
LOG_TAUS = (-16.6, -20.0, -25.0)  # τ = e^t: 2^-24, 2e-9, 1.4e-11


def tail(log_p: torch.Tensor) -> list[dict[str, float]]:
    """For each τ: the share of entries and of blocks kept, and the largest mass a row drops."""
    vocab = log_p.shape[1]
    top = log_p.max(0).values  # the largest p_v over the rows, per entry
    out = []
    for log_tau in LOG_TAUS:
        kept = top >= log_tau
        blocks = kept[: vocab // BLOCK * BLOCK].view(-1, BLOCK).any(1)
        dropped = (log_p.exp() * ~kept).sum(1).max()
        out.append(
            {
                "tau": f"e^{log_tau:g}",
                "entries kept": float(kept.float().mean()),
                "blocks kept": float(blocks.float().mean()),
                "largest mass dropped": float(dropped),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["antonym", "english-french", "country-currency"])
    parser.add_argument("--layer", type=int, default=4)
    args = parser.parse_args()
    model, template = hs.load_model(), hs.get_template("qa")
    rows = []
    for name in args.tasks:
        train = hs.split_task(hs.load_task(name), n_train=10, seed=0)[0]
        tokens, _ = encode_targets(model.tokenizer, template, train)
        prefix = build_prefix(model, tokens, 1)
        fitted = hs.fit(model, train, template, hs.FitConfig(layer=args.layer, loss="first_token"), progress=False)
        for label, delta in (
            ("Δ = 0", torch.zeros_like(fitted.intervention.delta)),
            ("fitted", fitted.intervention.delta),
        ):
            layer = torch.full((len(train),), args.layer)
            with torch.no_grad():
                scored = run_suffix(model, prefix, layer, delta.expand(len(train), -1, -1))
                hidden = scored.hidden.reshape(-1, scored.hidden.shape[-1])
                logits = hidden @ scored.weight.T + (0 if scored.bias is None else scored.bias)
                log_p = torch.log_softmax(logits, -1)
            rows += [{"task": name, "Δ": label, **row} for row in tail(log_p)]
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
