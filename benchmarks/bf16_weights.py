"""What the optional bf16 weights do to a fit: its loss, its Δ and its held-out accuracy.

    python benchmarks/bf16_weights.py [--tasks antonym english-french country-currency] [--seeds 0 1 2]
        [--layer 4] [--test 100]

For each task and seed it fits Δ on the seed's 10 training pairs (the default ``FitConfig`` at
``--layer``) twice, with fp32 weights (the default) and with the bf16 option
(``PrefixCachedForward(bf16_weights=True)``: the NLL reads a bf16 copy of the unembedding, and the
blocks above Δ's layer that run by hand read bf16 copies of their linear layers' weights), and reports
per fit:

* the final objective as the fit saw it, and the fitted Δ's training loss recomputed in fp32;
* the bf16 Δ's distance from the fp32 one, ‖Δ_bf16 − Δ_fp32‖ / ‖Δ_fp32‖;
* first-token accuracy and exact match on ``--test`` held-out pairs, scored in fp32 (the option only
  changes training);
* the fit's wall seconds.

It prints one row per task and variant (means over seeds) and the largest per-seed differences.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import headsteer as hs
from headsteer.fitting.forward import PrefixCachedForward
from headsteer.fitting.losses import scored_positions, task_loss
from headsteer.prompts import encode_targets


def fp32_loss(model, pairs, template, config: hs.FitConfig, delta: torch.Tensor) -> float:
    """The mean training loss of ``delta`` with fp32 weights, without the penalty."""
    tokens, targets = encode_targets(model.tokenizer, template, pairs, include_stop=config.loss == "sequence")
    with torch.no_grad():
        scored = PrefixCachedForward()(model, config.layer, tokens, delta, scored_positions(config.loss, targets))
        return float(task_loss(config.loss, scored, targets).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["antonym", "english-french", "country-currency"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--test", type=int, default=100, help="held-out pairs scored per seed")
    args = parser.parse_args()

    model = hs.load_model()
    template = hs.get_template("qa")
    rows = []
    for task in args.tasks:
        loaded = hs.load_task(task)
        for seed in args.seeds:
            train, test = hs.split_task(loaded, n_train=10, seed=seed)
            config = hs.FitConfig(layer=args.layer, seed=seed)
            deltas = {}
            for variant, bf16 in (("fp32", False), ("bf16", True)):
                start = time.perf_counter()
                forward = PrefixCachedForward(bf16_weights=bf16)
                result = hs.fit(model, train, template, config, task=task, forward=forward, progress=False)
                seconds = time.perf_counter() - start
                delta = result.intervention.delta
                deltas[variant] = delta
                scores = hs.summarize(
                    hs.evaluate_pairs(
                        model,
                        test[: args.test],
                        template,
                        [result.intervention],
                        progress=False,
                        whole_predictions=False,
                    )
                )
                rows.append(
                    {
                        "task": task,
                        "seed": seed,
                        "weights": variant,
                        "objective (as fitted)": float(result.history["objective"].iloc[-1]),
                        "training loss (fp32)": fp32_loss(model, train, template, config, delta),
                        "first_token": scores["first_token"],
                        "exact_match": scores["exact_match"],
                        "fit s": seconds,
                        "rel. Δ distance": float((delta - deltas["fp32"]).norm() / deltas["fp32"].norm()),
                    }
                )
    table = pd.DataFrame(rows)
    means = table.drop(columns="seed").groupby(["task", "weights"], sort=False).mean().reset_index()
    print(f"Gemma 3 270M fp32, layer {args.layer}, seeds {args.seeds}, {args.test} held-out pairs; means over seeds")
    print(means.to_markdown(index=False, floatfmt=".4f"))
    paired = table.pivot_table(index=["task", "seed"], columns="weights", values=["first_token", "exact_match"])
    for metric in ("first_token", "exact_match"):
        change = (paired[metric]["bf16"] - paired[metric]["fp32"]).abs()
        print(f"largest per-seed change in {metric}: {change.max():.3f} (mean {change.mean():.3f})")


if __name__ == "__main__":
    main()
