"""headsteer: task-driven, per-attention-head additive interventions on TransformerLens models.

    import headsteer as hs
    model = hs.load_model()                                   # Gemma 3 270M, offline
    task = hs.load_task("builtin/antonym")
    train, test = hs.split_task(task, n_train=10, seed=0)
    result = hs.fit(model, train, hs.get_template("qa"), hs.FitConfig(layer=4))
    with result.intervention.applied(model):
        ...
"""

from headsteer.config import FitConfig
from headsteer.evaluate import evaluate_pairs, mean_std, summarize
from headsteer.fitting.loop import FitJob, FitResult, NonFiniteLossError, fit, fit_encoded, fit_many
from headsteer.generate import RowDeltas, greedy_generate, greedy_ids, next_token_logits
from headsteer.intervention import Intervention, ModelMismatchError, ModelSignature, steer
from headsteer.models import DEFAULT_MODEL, load_model, wrap_model
from headsteer.prompts import TEMPLATES, Template, TemplateTokenizationError, encode_prompts, encode_targets, get_template
from headsteer.tasks import Pair, Task, TaskError, load_task, split_task
from headsteer.training_record import TrainingRecord

__all__ = [
    "DEFAULT_MODEL",
    "FitConfig",
    "FitJob",
    "FitResult",
    "Intervention",
    "ModelMismatchError",
    "ModelSignature",
    "NonFiniteLossError",
    "Pair",
    "RowDeltas",
    "TEMPLATES",
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
    "wrap_model",
]
