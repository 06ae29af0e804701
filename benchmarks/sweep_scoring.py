"""How long a sweep's scoring of one seed takes: every layer's Δ on the held-out pairs, in one batch.

    python benchmarks/sweep_scoring.py [--steps 20] [--max-test 100] [--out scores.csv]

Fits Δ at each of the 18 layers on antonym's seed-0 training pairs (``--steps`` steps, one batch), then
times ``headsteer.paper.sweep._score_all`` (greedy answers of up to 16 tokens) and prints each layer's
held-out exact match; ``--out`` keeps the predictions, to compare two checkouts (run with ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import time

import headsteer as hs
from headsteer.fitting.loop import FitJob, fit_many
from headsteer.paper.sweep import _score_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-test", type=int, default=100)
    parser.add_argument("--out", default=None, help="write the predictions here (CSV)")
    args = parser.parse_args()
    model, template = hs.load_model(), hs.get_template("qa")
    train, test = hs.split_task(hs.load_task("antonym"), n_train=10, seed=0, max_test=args.max_test)
    jobs = [FitJob(tuple(train), hs.FitConfig(layer=layer, steps=args.steps)) for layer in range(model.cfg.n_layers)]
    interventions = [result.intervention for result in fit_many(model, jobs, template, progress=False)]
    _score_all(model, test[:10], template, interventions[:2], 16)  # warm-up
    start = time.perf_counter()
    scores = _score_all(model, test, template, interventions, 16)
    seconds = time.perf_counter() - start
    n = len(test)
    by_layer = [round(float(scores.iloc[k * n : (k + 1) * n]["exact_match"].mean()), 2) for k in range(len(jobs))]
    print(f"{len(jobs)} Δ's × {n} held-out pairs scored in {seconds:.1f} s; exact match by layer {by_layer}")
    if args.out:
        scores.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
