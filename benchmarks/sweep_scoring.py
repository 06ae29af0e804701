"""How long a sweep's scoring of one seed takes: every layer's Δ on the held-out pairs, in one batch.

    python benchmarks/sweep_scoring.py [--steps 20] [--max-test 100] [--out scores.csv]

Fits Δ at each of the 18 layers on antonym's seed-0 training pairs (``--steps`` steps, one batch), then
times ``headsteer.paper.sweep._score_all`` (greedy answers of up to 16 tokens) twice in one run: as the
sweep scores (a wrong answer stops generating where it leaves its target) and with whole predictions;
checks that both give the same first-token and exact-match scores, row for row, and prints each layer's
held-out exact match; ``--out`` keeps the whole predictions, to compare two checkouts (run with ``PYTHONPATH``).
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
    parser.add_argument("--out", default=None, help="write the whole predictions here (CSV)")
    args = parser.parse_args()
    model, template = hs.load_model(), hs.get_template("qa")
    train, test = hs.split_task(hs.load_task("antonym"), n_train=10, seed=0, max_test=args.max_test)
    jobs = [FitJob(tuple(train), hs.FitConfig(layer=layer, steps=args.steps)) for layer in range(model.cfg.n_layers)]
    interventions = [result.intervention for result in fit_many(model, jobs, template, progress=False)]
    _score_all(model, test[:10], template, interventions[:2], 16)  # warm-up
    timed = {}
    for whole in (False, True):
        start = time.perf_counter()
        timed[whole] = (_score_all(model, test, template, interventions, 16, whole_predictions=whole),)
        timed[whole] += (time.perf_counter() - start,)
    (short, short_s), (full, full_s) = timed[False], timed[True]
    metrics = ["first_token", "exact_match"]
    same = short[metrics].equals(full[metrics])
    n = len(test)
    by_layer = [round(float(full.iloc[k * n : (k + 1) * n]["exact_match"].mean()), 2) for k in range(len(jobs))]
    print(f"{len(jobs)} Δ's × {n} held-out pairs scored in {short_s:.1f} s as the sweep does (wrong answers stop)")
    print(f"  and in {full_s:.1f} s with whole predictions; the same metrics row for row: {same}")
    print(f"  exact match by layer {by_layer}")
    if args.out:
        full.to_csv(args.out, index=False)
    if not same:
        raise SystemExit("the metrics differ")


if __name__ == "__main__":
    main()
