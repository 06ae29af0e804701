"""Parameter-efficient fine-tuning baselines (``peft``) on the same pairs and the same loss as Δ.

Each method trains a copy of the wrapped Hugging Face model, so the bridge the
other methods use is never touched (a HookedTransformer holds no Hugging Face
model, so these baselines need a TransformerBridge):

* ``lora``: rank-4 LoRA (α = 8) on the attention query and value projections;
* ``ia3``: IA3 scaling vectors on the key, value and MLP down projections;
* ``prompt_tuning``: 8 virtual tokens initialised from a task description.

The loss is the paper's first-token NLL, −log p(y_i¹ | prompt_i), averaged
over the training pairs, minimised with AdamW (full batch) for ``steps``
steps; the trained model is scored by greedy decoding with the same metrics
as every other method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from headsteer.backends import model_kind
from headsteer.errors import ConfigError
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS, score_generations
from headsteer.prompts import Template, answer_first_token, encode_prompts
from headsteer.tasks import Pair

PEFT_METHODS = ("lora", "ia3", "prompt_tuning")
DEFAULT_LR = {"lora": 5e-3, "ia3": 3e-2, "prompt_tuning": 3e-2}
TASK_DESCRIPTIONS = {
    "antonym": "Answer with the opposite of the word.",
    "synonym": "Answer with a word of the same meaning.",
    "english-french": "Translate the English word into French.",
    "english-german": "Translate the English word into German.",
}
GENERIC_DESCRIPTION = "Answer the question with one word."


@dataclass(frozen=True)
class PEFTConfig:
    """One PEFT baseline's training: ``method`` (one of :data:`PEFT_METHODS`), AdamW steps, step size, seed."""

    method: str = "lora"
    steps: int = 50
    lr: float | None = None  # None: DEFAULT_LR[method], and the resolved value is stored
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ConfigError(f"method must be one of {PEFT_METHODS}, got {self.method!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an int >= 1, got {self.steps!r}")
        if not self.step_size > 0:
            raise ConfigError(f"lr must be > 0, got {self.step_size!r}")
        object.__setattr__(self, "lr", self.step_size)

    @property
    def step_size(self) -> float:
        """The AdamW learning rate: ``lr``, or the method's default where ``lr`` is None."""
        return DEFAULT_LR[self.method] if self.lr is None else self.lr


def peft_model(model, config: PEFTConfig, task: str = ""):
    """A trainable ``peft`` model around a deep copy of ``model``'s Hugging Face model."""
    import peft

    hf = plain_hf_copy(model)
    names = {name.rsplit(".", 1)[-1] for name, _ in hf.named_modules()}
    needed = {"lora": {"q_proj", "v_proj"}, "ia3": {"k_proj", "v_proj", "down_proj"}}.get(config.method, set())
    if not needed <= names:
        raise ConfigError(
            f"{config.method} needs modules {sorted(needed)}; this model has none named {sorted(needed - names)}"
        )
    if config.method == "lora":
        lora = peft.LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=sorted(needed), task_type="CAUSAL_LM"
        )
        return peft.get_peft_model(hf, lora)
    if config.method == "ia3":
        ia3 = peft.IA3Config(target_modules=sorted(needed), feedforward_modules=["down_proj"], task_type="CAUSAL_LM")
        return peft.get_peft_model(hf, ia3)
    prompt = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8, prompt_tuning_init="RANDOM")
    return _prompt_tuning_model(hf, prompt, model.tokenizer, TASK_DESCRIPTIONS.get(task, GENERIC_DESCRIPTION))


def plain_hf_copy(model):
    """A fresh Hugging Face model with ``model``'s weights, free of the bridge's wrapper modules.

    A HookedTransformer holds no Hugging Face model: a ConfigError says so before any training.
    """
    from transformers import AutoModelForCausalLM

    config, weights = model_kind(model).hugging_face_weights(model)
    sample = next(iter(weights.values()))
    fresh = AutoModelForCausalLM.from_config(config, attn_implementation="eager", torch_dtype=sample.dtype)
    wanted = fresh.state_dict().keys()
    missing = [k for k in wanted if k not in weights]
    if missing:
        raise ValueError(f"cannot copy the model for PEFT: no weights for {missing[:3]}")
    fresh.load_state_dict({k: weights[k].clone() for k in wanted}, strict=True)
    return fresh.to(sample.device).eval()


def _prompt_tuning_model(hf, spec, tokenizer, description: str):
    """Virtual tokens initialised from ``description`` with our tokenizer (peft's TEXT init loads one by name)."""
    import peft

    ids = tokenizer(description, add_special_tokens=False)["input_ids"]
    wrapped = peft.get_peft_model(hf, spec)
    rows = torch.tensor([ids[i % len(ids)] for i in range(spec.num_virtual_tokens)])
    with torch.no_grad():  # the virtual tokens start as the description's token embeddings (repeated to 8)
        embedding = wrapped.prompt_encoder[wrapped.active_adapter].embedding
        embedding.weight.copy_(hf.get_input_embeddings().weight[rows])
    return wrapped


def first_token_loss(trained, tokenizer, template: Template, pairs: Sequence[Pair]) -> torch.Tensor:
    """(1/N) Σ_i −log p(y_i¹ | prompt_i) under ``trained`` (a Hugging Face causal LM)."""
    tokens = encode_prompts(tokenizer, template, [p.input for p in pairs])
    targets = torch.tensor([answer_first_token(tokenizer, template, p) for p in pairs])
    device = next(trained.parameters()).device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    logits = trained(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits  # the last position only
    return torch.nn.functional.cross_entropy(logits[:, -1].float(), targets.to(device))


def train_peft(
    model, pairs: Sequence[Pair], template: Template, config: PEFTConfig, task: str = "", progress: bool = False
) -> tuple[Any, pd.DataFrame]:
    """Train one PEFT baseline; returns the trained model and its loss per step."""
    torch.manual_seed(config.seed)
    trained = peft_model(model, config, task)
    trained.train()
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.step_size, weight_decay=0.0)
    history = []
    for step in tqdm(range(config.steps), desc=config.method, disable=not progress, leave=False):
        loss = first_token_loss(trained, model.tokenizer, template, pairs)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{config.method}: non-finite loss at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"step": step, "task_loss": float(loss.detach())})
    trained.eval()
    with torch.no_grad():
        history.append(
            {"step": config.steps, "task_loss": float(first_token_loss(trained, model.tokenizer, template, pairs))}
        )
    return trained, pd.DataFrame(history)


@torch.no_grad()
def evaluate_hf(
    trained,
    tokenizer,
    pairs: Sequence[Pair],
    template: Template,
    batch_size: int = 64,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> pd.DataFrame:
    """``evaluate_pairs``' metrics for a Hugging Face (or peft) model, by its own greedy ``generate``."""
    frames = []
    device = next(trained.parameters()).device
    for start in range(0, len(pairs), batch_size):
        chunk = list(pairs[start : start + batch_size])
        tokens = encode_prompts(tokenizer, template, [p.input for p in chunk])
        out = trained.generate(
            input_ids=tokens.input_ids.to(device),
            attention_mask=tokens.attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = out[:, tokens.input_ids.shape[1] :].cpu()
        frames.append(score_generations(tokenizer, chunk, template, new))
    return pd.concat(frames, ignore_index=True)
