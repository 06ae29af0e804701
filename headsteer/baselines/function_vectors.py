"""Function vectors (Todd et al. 2023) on TransformerLens hooks, from the same training pairs.

With the N training pairs, prompt i is the other N − 1 pairs as demonstrations
(shuffled, seeded) and pair i as the query (leave-one-out, so a query never
sees its own answer). Then

    ā_{ℓh}   = mean_i z_{ℓh}(clean_i)                          (hook_z at the last token)
    AIE_{ℓh} = mean_i [ p(y_i | corrupt_i, z_{ℓh} := ā_{ℓh}) − p(y_i | corrupt_i) ]
    FV       = Σ_{(ℓ,h) ∈ top-k AIE} ā_{ℓh} W_O^{ℓh}               ∈ R^{d_model}

where corrupt_i is prompt i with the demonstrations' answers shuffled among
them (a derangement) and y_i the first token of pair i's answer. The FV is
added to the residual stream (``blocks.{L}.hook_resid_post``) at the last
prompt token. Patching a head at the last token changes nothing at earlier
positions, so every corrupted prompt's prefix is run once and each of the
L·H patches costs one token.

For models with a norm after the attention output (Gemma's
post-attention norm), ā W_O is the head's output before that norm: the FV is
the same linear read-out Todd et al. use, not the head's exact contribution.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from headsteer.baselines.prompting import few_shot_template
from headsteer.errors import ConfigError, ModelMismatchError
from headsteer.fitting.forward import build_prefix, run_suffix
from headsteer.hooks import PromptEndAdd, PromptPositions, hook_z_name, last_token_activations, resid_post_name
from headsteer.models import ModelSignature
from headsteer.prompts import Template, TokenBatch, answer_first_token, encode_texts
from headsteer.steering import Applies, Hook
from headsteer.tasks import Pair


@dataclass(frozen=True)
class FVConfig:
    """``top_k`` heads summed into the FV; ``layer`` gets it (None: n_layers // 3, Todd et al.'s)."""

    top_k: int = 10
    layer: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top_k must be an int >= 1, got {self.top_k!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            raise ConfigError(f"layer must be None or an int >= 0, got {self.layer!r}")


@dataclass(frozen=True)
class FunctionVector(Applies):
    """A residual-stream vector added at the last prompt token of ``layer``; steers like an Intervention."""

    vector: Float[Tensor, " d_model"]
    layer: int
    heads: tuple[tuple[int, int], ...]
    model: ModelSignature
    task: str = ""

    @property
    def hook_name(self) -> str:
        return resid_post_name(self.layer)

    def check_fits(self, model) -> None:
        problems = self.model.mismatches(ModelSignature.of(model))
        if problems or self.hook_name not in model.hook_dict:
            raise ModelMismatchError(f"function vector for {self.task!r} does not fit this model: {problems}")

    def hooks(self, positions: PromptPositions) -> list[Hook]:
        """The vector added to the residual stream at the last prompt token."""
        return [(self.hook_name, PromptEndAdd(self.vector, positions, site_ndim=1))]


def icl_prompts(pairs: Sequence[Pair], template: Template, seed: int, corrupt: bool = False) -> list[str]:
    """Leave-one-out few-shot prompts; ``corrupt`` shuffles the demonstrations' answers (no fixed points)."""
    if len(pairs) < 3:
        raise ValueError(f"function vectors need at least 3 training pairs, got {len(pairs)}")
    rng = random.Random(seed)
    prompts = []
    for i, query in enumerate(pairs):
        demos = [p for j, p in enumerate(pairs) if j != i]
        rng.shuffle(demos)
        if corrupt:
            shift = rng.randrange(1, len(demos))  # a rotation: every demo gets another demo's answer
            demos = [Pair(d.input, demos[(k + shift) % len(demos)].output) for k, d in enumerate(demos)]
        prompts.append(few_shot_template(template, demos).format_prompt(query.input))
    return prompts


def last_token_z(model, tokens: TokenBatch) -> Float[Tensor, "batch n_layers n_heads d_head"]:
    """Every layer's hook_z at each (left-padded) row's last token."""
    names = [hook_z_name(layer) for layer in range(model.cfg.n_layers)]
    return torch.stack(last_token_activations(model, tokens.input_ids, tokens.attention_mask, names), dim=1)


@torch.no_grad()
def indirect_effects(
    model,
    corrupted: TokenBatch,
    mean_z: Float[Tensor, "n_layers n_heads d_head"],
    targets: Int[Tensor, " batch"],
    progress: bool = False,
) -> Float[Tensor, "n_layers n_heads"]:
    """AIE_{ℓh}: the mean gain in p(target) from setting head (ℓ, h) to its clean mean at the last token."""
    n, (n_layers, n_heads, _) = len(corrupted), mean_z.shape
    corrupt_z = last_token_z(model, corrupted)
    prefix = build_prefix(model, corrupted, n_scored=1, repeats=n_heads)  # row i·H + h patches head h
    row_targets = targets.repeat_interleave(n_heads)[:, None]

    def target_probs(layer: int | None = None, deltas: Tensor | None = None) -> Tensor:
        nll = run_suffix(model, prefix, layer, deltas).token_nll(row_targets)
        return torch.exp(-nll[:, 0]).cpu().reshape(n, n_heads)

    base = target_probs()[:, :1]  # no patch: every repeat of a row is the same
    effects = torch.zeros(n_layers, n_heads)
    for layer in tqdm(range(n_layers), desc="head effects", disable=not progress, leave=False):
        patch = mean_z[layer][None] - corrupt_z[:, layer]  # [n, H, D]: what moves z to the clean mean
        onehot = torch.eye(n_heads)[None, :, :, None]  # [1, H(patched), H, 1]
        deltas = (onehot * patch[:, None]).reshape(n * n_heads, n_heads, -1)
        effects[layer] = (target_probs(layer, deltas) - base).mean(0)
    return effects


def head_output_vector(model, mean_z: Tensor, heads: Sequence[tuple[int, int]]) -> Float[Tensor, " d_model"]:
    """Σ over ``heads`` of ā_{ℓh} W_O^{ℓh} (W_O: [n_heads, d_head, d_model] per layer)."""
    total = torch.zeros(model.cfg.d_model)
    for layer, head in heads:
        w_o = model.blocks[layer].attn.W_O.detach().cpu()
        total = total + mean_z[layer, head] @ w_o[head]
    return total


def fit_function_vector(
    model,
    pairs: Sequence[Pair],
    template: Template,
    config: FVConfig = FVConfig(),
    task: str = "",
    progress: bool = False,
) -> tuple[FunctionVector, pd.DataFrame]:
    """The FV and a table of every head's AIE (layer, head, aie, rank; rank 1 = largest)."""
    layer = model.cfg.n_layers // 3 if config.layer is None else config.layer
    if not layer < model.cfg.n_layers:
        raise ConfigError(f"FV layer {layer} is out of range: this model has layers 0..{model.cfg.n_layers - 1}")
    clean = encode_texts(model.tokenizer, icl_prompts(pairs, template, config.seed))
    corrupted = encode_texts(model.tokenizer, icl_prompts(pairs, template, config.seed, corrupt=True))
    targets = torch.tensor([answer_first_token(model.tokenizer, template, p) for p in pairs])
    mean_z = last_token_z(model, clean).mean(0)
    aie = indirect_effects(model, corrupted, mean_z, targets, progress)
    table = _effects_table(aie, task)
    heads = tuple((int(r.layer), int(r.head)) for r in table.head(config.top_k).itertuples())
    vector = head_output_vector(model, mean_z, heads)
    return FunctionVector(vector, layer, heads, ModelSignature.of(model), task), table


def _effects_table(aie: Tensor, task: str) -> pd.DataFrame:
    n_layers, n_heads = aie.shape
    table = pd.DataFrame(
        {
            "task": task,
            "layer": torch.arange(n_layers).repeat_interleave(n_heads).tolist(),
            "head": torch.arange(n_heads).repeat(n_layers).tolist(),
            "aie": aie.flatten().tolist(),
        }
    )
    table = table.sort_values("aie", ascending=False, kind="stable").reset_index(drop=True)
    table["rank"] = range(1, len(table) + 1)
    return table
