"""Score a model, with or without interventions, on rule-understanding pairs.

* ``first_token``: the argmax next token after the prompt (the first greedy
  token) equals the first token of the answer (Todd et al.'s top-1 accuracy).
* ``exact_match``: the greedy answer (at most ``max_new_tokens``, cut at the
  template's stop string) equals the target after normalisation: surrounding
  whitespace stripped, Unicode case-folded. Nothing else is forgiven
  (punctuation and accents count).
* ``run_on`` (derived, :func:`run_on`): the answer starts right (first token)
  but is not the target — typically the right word followed by more text,
  because nothing taught the model where the answer ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from headsteer.backends import model_kind
from headsteer.errors import TaskError
from headsteer.generation import cut_at_stop, decode_tokens, greedy_ids, normalize
from headsteer.prompts import Template, answer_first_token, encode_prompts
from headsteer.steering import RowDeltas, Steering
from headsteer.tasks import Pair

# Generated tokens per answer: room for every answer in Todd et al.'s tasks with its stop string (the longest,
# a currency name with its code, is 11 tokens in Gemma 3's tokenizer, stop included), so a right answer is never cut.
DEFAULT_MAX_NEW_TOKENS = 16


def evaluate_pairs(
    model,
    pairs: Sequence[Pair],
    template: Template,
    steering: Steering = (),
    batch_size: int = 64,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = True,
    whole_predictions: bool = True,
) -> pd.DataFrame:
    """One row per pair: input, target, prediction, first_token, exact_match.

    ``steering`` is a list of interventions applied to every pair, or
    ``RowDeltas`` with one Δ (and layer) per pair. ``whole_predictions=False``
    stops generating each answer once it can no longer match its target (see
    :func:`~headsteer.generation.greedy_ids`): the same first_token and
    exact_match, faster, but a wrong prediction is only its text up to there.
    """
    if not pairs:
        raise TaskError("evaluate_pairs: no pairs to evaluate")
    model_kind(model)  # a model headsteer cannot run is refused before any work
    if isinstance(steering, RowDeltas) and len(steering.layers) != len(pairs):
        raise ValueError(f"RowDeltas has {len(steering.layers)} rows for {len(pairs)} pairs")
    frames = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="evaluate", disable=not progress, leave=False):
        chunk = pairs[start : start + batch_size]
        part = steering.select(slice(start, start + batch_size)) if isinstance(steering, RowDeltas) else steering
        tokens = encode_prompts(model.tokenizer, template, [p.input for p in chunk])
        answers = None if whole_predictions else [p.output for p in chunk]
        ids = greedy_ids(model, tokens, part, max_new_tokens, template.stop, answers)
        frames.append(score_generations(model.tokenizer, chunk, template, ids))
    return pd.concat(frames, ignore_index=True)


def score_generations(
    tokenizer, pairs: Sequence[Pair], template: Template, new_ids: Int[Tensor, "batch new"]
) -> pd.DataFrame:
    """The metrics of greedy continuations ``new_ids`` (from any generator; EOS ends a row)."""
    answers = [cut_at_stop(t, template.stop) for t in decode_tokens(tokenizer, new_ids, tokenizer.eos_token_id)]
    return pd.DataFrame(
        [
            {
                "input": pair.input,
                "target": pair.output,
                "prediction": answer,
                "first_token": first == answer_first_token(tokenizer, template, pair),
                "exact_match": normalize(answer) == normalize(pair.output),
            }
            for pair, first, answer in zip(pairs, new_ids[:, 0].tolist(), answers)
        ]
    )


def run_on(scores: pd.DataFrame) -> pd.Series:
    """Per row of an ``evaluate_pairs`` table: the answer started right (first token) but is not the target."""
    return scores["first_token"].astype(bool) & ~scores["exact_match"].astype(bool)


def summarize(scores: pd.DataFrame) -> dict[str, float]:
    """Mean accuracies of an ``evaluate_pairs`` table, and the share of answers that start right but run on."""
    return {
        "first_token": float(scores["first_token"].mean()),
        "exact_match": float(scores["exact_match"].mean()),
        "run_on": float(run_on(scores).mean()),
        "n": len(scores),
    }


def mean_std(
    results: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = ("first_token", "exact_match")
) -> pd.DataFrame:
    """Mean and (sample) std across seeds of each metric, grouped by ``by``."""
    grouped = results.groupby(list(by))[list(metrics)]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).fillna(0.0).add_suffix("_std"))
    out["seeds"] = results.groupby(list(by)).size()
    return out.reset_index()


def format_mean_std(table: pd.DataFrame, metrics: Sequence[str] = ("first_token", "exact_match")) -> pd.DataFrame:
    """``mean ± std`` strings for display."""
    shown = table.drop(columns=[c for c in table if str(c).endswith(("_mean", "_std"))]).copy()
    for m in metrics:
        shown[m] = [f"{a:.3f} ± {b:.3f}" for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"])]
    return shown
