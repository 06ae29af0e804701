"""headsteer: task-driven, per-attention-head additive interventions on TransformerLens models.

import headsteer as hs
model = hs.load_model()                                   # Gemma 3 270M, offline
task = hs.load_task("builtin/antonym")
train, test = hs.split_task(task, n_train=10, seed=0)
result = hs.fit(model, train, hs.get_template("qa"), hs.FitConfig(layer=4))
hs.generate(model, ["hot", "tall"], [result.intervention])
"""

from headsteer import display as _display  # noqa: F401 - registers the HTML summaries with Jupyter
from headsteer.config import FitConfig
from headsteer.errors import (
    HeadsteerError,
    ModelMismatchError,
    NonFiniteLossError,
    TaskError,
    TemplateTokenizationError,
)
from headsteer.evaluate import evaluate_pairs, mean_std, summarize
from headsteer.fitting.loop import FitJob, FitResult, fit, fit_encoded, fit_many
from headsteer.generation import generate, greedy_generate, greedy_ids, next_token_logits
from headsteer.intervention import Intervention
from headsteer.models import DEFAULT_MODEL, ModelSignature, load_model, wrap_model
from headsteer.prompts import TEMPLATES, Template, encode_prompts, encode_targets, get_template, token_limit
from headsteer.steering import RowDeltas, Steerer, steer
from headsteer.tasks import Pair, Task, load_task, split_task
from headsteer.training_record import TrainingRecord

__all__ = [
    "DEFAULT_MODEL",
    "TEMPLATES",
    "FitConfig",
    "FitJob",
    "FitResult",
    "HeadsteerError",
    "Intervention",
    "ModelMismatchError",
    "ModelSignature",
    "NonFiniteLossError",
    "Pair",
    "RowDeltas",
    "Steerer",
    "Task",
    "TaskError",
    "Template",
    "TemplateTokenizationError",
    "TrainingRecord",
    "encode_prompts",
    "encode_targets",
    "evaluate_pairs",
    "fit",
    "fit_encoded",
    "fit_many",
    "generate",
    "get_template",
    "greedy_generate",
    "greedy_ids",
    "load_model",
    "load_task",
    "mean_std",
    "next_token_logits",
    "split_task",
    "steer",
    "summarize",
    "token_limit",
    "wrap_model",
]
