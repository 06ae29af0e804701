"""The README's main job: fit Δ on 10 built-in antonym pairs and show what it changes."""

from __future__ import annotations

import pandas as pd

from headsteer.config import FitConfig
from headsteer.prompts import get_template
from headsteer.runs import Run, fit_and_score
from headsteer.tasks import load_task


def run_demo(
    model,
    task: str = "builtin/antonym",
    template: str = "qa",
    config: FitConfig = FitConfig(),
    n_train: int = 10,
    show: int = 10,
) -> Run:
    """Fit, then print before/after predictions on held-out words and the metrics."""
    loaded = load_task(task)
    print(f"model {model.cfg.model_name} | task {loaded.name} ({len(loaded)} pairs) | template {template!r}")
    print(f"fitting Δ at blocks.{config.layer}.attn.hook_z on {n_train} pairs: {config}")
    run = fit_and_score(model, loaded, get_template(template), config, n_train=n_train, max_test=None)
    iv = run.result.intervention
    print(f"\n{iv}\n")
    side_by_side = pd.DataFrame(
        {
            "input": run.zero_shot["input"],
            "target": run.zero_shot["target"],
            "zero-shot": run.zero_shot["prediction"],
            "with Δ": run.fitted["prediction"],
        }
    )
    print(side_by_side.head(show).to_string(index=False))
    metrics = run.metrics()
    print(f"\nheld-out pairs: {metrics['n_test']}")
    for method in ("zero_shot", "fitted"):
        m = metrics[method]
        print(f"  {method:<10} first-token accuracy {m['first_token']:.3f}   exact match {m['exact_match']:.3f}")
    return run
