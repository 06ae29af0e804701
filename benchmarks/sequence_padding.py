"""What padding costs the sequence loss: a seed whose answers differ in length against one whose do not.

    python benchmarks/sequence_padding.py [--steps 5] [--seeds 0 1]

For each seed: the antonym training pairs' scored positions per row (answer tokens and the stop),
and the wall time of the 18 layers' fits in one batch (``fit_many``, Gemma 3 270M, fp32), with the
final task loss at layer 4 (to compare two checkouts: run it with ``PYTHONPATH`` set to each).
A batch is padded to its longest answer; the sequence loss scores only the real positions.
"""

from __future__ import annotations

import argparse
import time

import headsteer as hs
from headsteer.fitting.loop import FitJob, fit_many
from headsteer.prompts import encode_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    model, template = hs.load_model(), hs.get_template("qa")
    task = hs.load_task("antonym")
    for seed in args.seeds:
        train = tuple(hs.split_task(task, n_train=10, seed=seed)[0])
        _, targets = encode_targets(model.tokenizer, template, list(train), include_stop=True)  # as the fit does
        jobs = [FitJob(train, hs.FitConfig(layer=layer, seed=seed, steps=args.steps)) for layer in range(18)]
        fit_many(model, jobs[:2], template, progress=False)  # warm-up
        start = time.perf_counter()
        results = fit_many(model, jobs, template, progress=False)
        seconds = time.perf_counter() - start
        loss = float(results[4].history["task_loss"].iloc[-1])
        print(
            f"seed {seed}: scored positions per row {targets.target_mask.sum(1).tolist()}; "
            f"18 fits × {args.steps + 1} passes {seconds:.1f} s; layer 4 task loss {loss:.6f}"
        )


if __name__ == "__main__":
    main()
