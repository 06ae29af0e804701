"""The methods of each paper table by name, in the order its Markdown tables and figures show them.

Only names live here, so the figures and the command line's judge can order
rows without importing the experiments (and through them the baselines and
the fitter). Each experiment module maps these names to how its methods run:
:data:`headsteer.paper.table.METHOD_RUNS`,
:data:`headsteer.paper.composition.METHOD_RUNS`,
:data:`headsteer.paper.opinion.METHOD_RUNS`.
"""

from __future__ import annotations

# The comparison tables (the paper's Tables 1, 4, 6).
TABLE_METHODS: tuple[str, ...] = (
    "0-shot",
    "10-shot",
    "0-shot + FV",
    "10-shot + FV",
    "ICV",
    "LoRA",
    "IA3",
    "prompt tuning",
    "Δ (ours)",
    "Δ tuned (CV)",
    "Δ unregularized",
    "Δ Adam",
    "Δ FISTA",
)
# The table's methods whose prompts hold every training pair before the query: the longest prompts it scores.
FEW_SHOT_METHODS: tuple[str, ...] = ("10-shot", "10-shot + FV")
# The table's method that picks γ = λ by cross-validation on the training pairs.
CROSS_VALIDATED_METHOD = "Δ tuned (CV)"

# Task composition (the paper's Table 2).
COMPOSE_METHODS: tuple[str, ...] = ("0-shot", "Δ inner only", "Δ outer only", "Ours (Add)", "Ours (Re-optimized)")

# Opinion steering on OpinionQA (the paper's Table 3).
OPINION_METHODS: tuple[str, ...] = ("uniform", "unsteered", "0-shot", "10-shot", "Δ (ours)", "Δ unregularized")
