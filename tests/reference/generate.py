"""Write the reference numbers the redesign must reproduce (run once, on the code before it).

    python -m tests.reference.generate

Fits on the tiny random Gemma 3 model (tests/helpers.py) with every optimizer
and both answer losses, two layers batched together, and the greedy answers
each Δ gives on held-out pairs; saved as ``fits.safetensors`` (Δ's) and
``fits.json`` (objectives per step, predictions). tests/test_reference.py
recomputes them with the current code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import headsteer as hs
from tests.helpers import tiny_bridge

HERE = Path(__file__).parent
CASES = {  # name: (optimizer, loss, gamma = lam)
    "prox_adam_first_token": ("prox_adam", "first_token", 0.01),
    "prox_adam_sequence": ("prox_adam", "sequence", 0.01),
    "fista_first_token": ("fista", "first_token", 0.01),
    "adam_first_token": ("adam", "first_token", 0.01),
    "prox_adam_unregularized": ("prox_adam", "first_token", 0.0),
}
LAYERS = (0, 2)


def run_case(model, optimizer: str, loss: str, strength: float):
    task = hs.load_task("builtin/antonym")
    train, test = hs.split_task(task, n_train=10, seed=0, max_test=6)
    jobs = [
        hs.FitJob(
            tuple(train),
            hs.FitConfig(layer=layer, gamma=strength, lam=strength, loss=loss, optimizer=optimizer, steps=5, lr=0.5),
            task.name,
        )
        for layer in LAYERS
    ]
    results = hs.fit_many(model, jobs, hs.get_template("qa"), progress=False)
    qa = hs.get_template("qa")
    # Saved with the answer budget of the time (6 tokens); the budget is an argument, not part of the fit.
    predictions = [
        hs.evaluate_pairs(model, test, qa, [r.intervention], max_new_tokens=6, progress=False)["prediction"].tolist()
        for r in results
    ]
    return results, predictions


def main() -> None:
    torch.manual_seed(0)
    model = tiny_bridge("gemma3")
    tensors, record = {}, {}
    for name, (optimizer, loss, strength) in CASES.items():
        results, predictions = run_case(model, optimizer, loss, strength)
        for layer, result, preds in zip(LAYERS, results, predictions):
            key = f"{name}/layer{layer}"
            tensors[key] = result.intervention.delta.contiguous()
            record[key] = {
                "objective": result.history["objective"].tolist(),
                "task_loss": result.history["task_loss"].tolist(),
                "predictions": preds,
            }
    save_file(tensors, str(HERE / "fits.safetensors"))
    (HERE / "fits.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
