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
    # Answers that finish: the paper's first-token loss against the sequence loss (every answer token and the
    # stop string), and the loss chosen per cell by cross-validation on its training pairs.
    "Δ first-token loss",
    "Δ sequence loss",
    "Δ loss by CV",
    # The paper's own template ("hello:" -> "bonjour") beside Todd et al.'s "qa" for the same pairs.
    "0-shot (colon)",
    "10-shot (colon)",
    "Δ first-token loss (colon)",
    "Δ sequence loss (colon)",
    # The evidence for the default loss: each loss's cross-validated answers on the *training* pairs
    # (a row's items are the cell's training pairs, each answered by Δ fitted without its fold).
    "CV on training pairs: first-token loss",
    "CV on training pairs: sequence loss",
)
# What `headsteer table` runs unless --methods says otherwise: the paper's comparison.
DEFAULT_TABLE_METHODS: tuple[str, ...] = TABLE_METHODS[:13]
# The table's methods whose prompts hold every training pair before the query: the longest prompts it scores.
FEW_SHOT_METHODS: tuple[str, ...] = ("10-shot", "10-shot + FV", "10-shot (colon)")
# The table's methods that cross-validate on the training pairs (k folds need at least k pairs).
CROSS_VALIDATED_METHODS: tuple[str, ...] = (
    "Δ tuned (CV)",
    "Δ loss by CV",
    "CV on training pairs: first-token loss",
    "CV on training pairs: sequence loss",
)
# The table's methods scored with the colon template whatever the table's own template.
COLON_METHODS: tuple[str, ...] = tuple(m for m in TABLE_METHODS if m.endswith("(colon)"))

# Task composition (the paper's Table 2).
COMPOSE_METHODS: tuple[str, ...] = ("0-shot", "Δ inner only", "Δ outer only", "Ours (Add)", "Ours (Re-optimized)")

# Opinion steering on OpinionQA (the paper's Table 3).
OPINION_METHODS: tuple[str, ...] = (
    "uniform",
    "unsteered",
    "0-shot",
    "10-shot",
    "Δ (ours)",
    "Δ forward KL",
    "Δ unregularized",
)
