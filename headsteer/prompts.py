"""Prompt templates as data, and their tokenization into padded batches.

A template turns a pair (input, output) into a prompt and an answer. The
prompt's tokens must be a prefix of the tokens of prompt + answer, otherwise
"the last prompt token" is not a well-defined place to intervene; this is
checked for every example and reported by name when it fails.

A token limit guards every row tokenized from a pair (``encode_targets``:
prompt + answer; ``encode_prompts``: the prompt, few-shot demonstrations
included): a longer row is refused by name with :class:`PromptTooLongError`
before it reaches the model, whose memory grows with the square of the length
(one 5,000-word pair took 14 GB). The default, ``DEFAULT_MAX_TOKENS`` = 256,
is far above Todd et al.'s pairs (under 20 tokens in the ``qa`` template) and
their 10-shot prompts (about 100); raise it with ``--max-tokens N`` or, in
Python, ``with headsteer.prompts.token_limit(N): ...``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headsteer.errors import ConfigError, PromptTooLongError, TaskError, TemplateTokenizationError
from headsteer.strict_json import check_object, field_name
from headsteer.tasks import Pair, clipped

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_FLAG = "--max-tokens"
# A context variable, not a parameter: the limit must hold at every place a pair is
# tokenized (fits, scoring, baselines), which a parameter would have to reach through
# every caller in between.
_MAX_TOKENS: ContextVar[int | None] = ContextVar("headsteer_max_tokens", default=DEFAULT_MAX_TOKENS)


@contextmanager
def token_limit(max_tokens: int | None) -> Iterator[None]:
    """Inside the ``with``, a row tokenized from a pair may have at most ``max_tokens`` tokens (None: no limit)."""
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"the token limit must be None or an int >= 1, got {max_tokens!r}")
    reset = _MAX_TOKENS.set(max_tokens)
    try:
        yield
    finally:
        _MAX_TOKENS.reset(reset)


def current_token_limit() -> int | None:
    return _MAX_TOKENS.get()


@dataclass(frozen=True)
class Template:
    """``prompt`` and ``answer`` are format strings with ``{input}``/``{output}``.

    ``stop`` ends an answer: generation is cut there, and the sequence loss
    teaches it as the answer's last token(s).
    """

    name: str
    prompt: str
    answer: str
    stop: str = "\n"

    def __post_init__(self) -> None:
        if "{input}" not in self.prompt:
            raise ConfigError(f"template {self.name!r}: prompt must contain '{{input}}'")
        if "{output}" not in self.answer:
            raise ConfigError(f"template {self.name!r}: answer must contain '{{output}}'")

    def format_prompt(self, text: str) -> str:
        return self.prompt.format(input=text)

    def format_answer(self, text: str) -> str:
        return self.answer.format(output=text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, path: str = "template") -> Template:
        """The template ``to_dict`` wrote: exactly its four string fields, else a ConfigError naming ``path``."""
        fields = check_object(data, dict.fromkeys(cls.__dataclass_fields__, str), path, ConfigError)
        try:
            return cls(**fields)
        except ValueError as err:  # __post_init__'s checks, named by the field
            raise ConfigError(f"{field_name(path)}: {err}") from None


TEMPLATES: dict[str, Template] = {
    # The paper's: "hello:" -> "bonjour".
    "colon": Template("colon", "{input}:", "{output}"),
    # Todd et al.'s: "Q: hello\nA:" -> " bonjour".
    "qa": Template("qa", "Q: {input}\nA:", " {output}"),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}") from None


@dataclass(frozen=True)
class TokenBatch:
    """Padded token rows; ``last_index[i]`` is row i's last prompt token (any padding side)."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    last_index: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_len(self) -> int:
        """Passes at least this long hold every row's prompt (shorter ones continue a KV cache)."""
        return int(self.last_index.max()) + 1

    def select(self, rows: Tensor) -> TokenBatch:
        return TokenBatch(self.input_ids[rows], self.attention_mask[rows], self.last_index[rows])


@dataclass(frozen=True)
class AnswerTargets:
    """Answer token ids per example (right-padded); ``target_ids[i, j]`` is scored at ``last_index[i] + j``."""

    target_ids: Int[Tensor, "batch tgt"]
    target_mask: Bool[Tensor, "batch tgt"]

    def select(self, rows: Tensor) -> AnswerTargets:
        return AnswerTargets(self.target_ids[rows], self.target_mask[rows])


@dataclass(frozen=True)
class OptionTargets:
    """Per example: the option-letter token ids and the target distribution over them.

    Rows with fewer options pad with ``mask = False`` (their ids and probs are ignored).
    """

    option_ids: Int[Tensor, "batch options"]
    option_mask: Bool[Tensor, "batch options"]
    probs: Float[Tensor, "batch options"]

    def __post_init__(self) -> None:
        if not (self.option_ids.shape == self.option_mask.shape == self.probs.shape):
            raise ValueError("option_ids, option_mask and probs must have the same [batch, options] shape")
        sums = (self.probs * self.option_mask).sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ValueError(f"each target distribution must sum to 1 over its options, got {sums.tolist()}")

    def select(self, rows: Tensor) -> OptionTargets:
        return OptionTargets(self.option_ids[rows], self.option_mask[rows], self.probs[rows])


Targets = AnswerTargets | OptionTargets


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def split_answer_tokens(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Tokens of ``prompt`` and of ``answer`` as they stand in ``prompt + answer``."""
    return _split_at_prompt(_ids(tokenizer, prompt), _ids(tokenizer, prompt + answer), prompt, answer)


def pair_tokens(tokenizer, template: Template, pair: Pair, include_stop: bool = False) -> tuple[list[int], list[int]]:
    """A pair's prompt tokens and answer tokens (+ ``template.stop``), within the token limit.

    Raises :class:`PromptTooLongError` (the length is checked first, so a huge
    pair is not printed token by token) or :class:`TemplateTokenizationError`.
    """
    prompt = template.format_prompt(pair.input)
    answer = template.format_answer(pair.output) + (template.stop if include_stop else "")
    full_ids = _ids(tokenizer, prompt + answer)
    _check_length(len(full_ids), f"pair {pair.label()}", "prompt + answer", template)
    return _split_at_prompt(_ids(tokenizer, prompt), full_ids, prompt, answer)


def check_pairs(tokenizer, template: Template, pairs: Sequence[Pair], include_stop: bool = False) -> None:
    """Refuse, by name, the first pair that ``encode_targets`` would refuse (no tensors are built)."""
    for pair in pairs:
        pair_tokens(tokenizer, template, pair, include_stop)


def _check_length(n_tokens: int, what: str, counted: str, template: Template) -> None:
    limit = current_token_limit()
    if limit is not None and n_tokens > limit:
        raise PromptTooLongError(
            f"{what} is {n_tokens} tokens long ({counted}, template {template.name!r}), more than the limit "
            f"of {limit}; shorten or drop it, or raise the limit ({MAX_TOKENS_FLAG} N; in Python, "
            "with headsteer.prompts.token_limit(N))"
        )


def _split_at_prompt(
    prompt_ids: list[int], full_ids: list[int], prompt: str, answer: str
) -> tuple[list[int], list[int]]:
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise TemplateTokenizationError(
            f"prompt {prompt!r} with answer {answer!r}: the prompt's tokens {prompt_ids} are not "
            f"a strict prefix of the tokens of prompt+answer {full_ids}; the answer would merge "
            "with the prompt's last token. Use another template (e.g. 'qa') or drop this pair."
        )
    return prompt_ids, full_ids[len(prompt_ids) :]


def answer_first_token(tokenizer, template: Template, pair: Pair) -> int:
    """The id of the answer's first token as it stands after the prompt (what first-token accuracy and loss read)."""
    return split_answer_tokens(tokenizer, template.format_prompt(pair.input), template.format_answer(pair.output))[1][0]


def _pad(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def encode_prompts(tokenizer, template: Template, inputs: Sequence[str]) -> TokenBatch:
    """Left-pad the prompts of ``inputs`` (for generation and next-token scoring), each within the token limit."""
    if not inputs:
        raise TaskError("encode_prompts: no inputs")
    return _left_padded(tokenizer, [prompt_tokens(tokenizer, template, x) for x in inputs])


def prompt_tokens(tokenizer, template: Template, text: str) -> list[int]:
    """The tokens of ``text``'s prompt, within the token limit."""
    ids = _ids(tokenizer, template.format_prompt(text))
    _check_length(len(ids), f"the prompt of input {clipped(text)!r}", "prompt", template)
    return ids


def encode_texts(tokenizer, texts: Sequence[str]) -> TokenBatch:
    """Left-pad ready-made prompt texts (each row's last token is the prompt's last)."""
    if not texts:
        raise ValueError("encode_texts: no texts")
    return _left_padded(tokenizer, [_ids(tokenizer, text) for text in texts])


def _left_padded(tokenizer, rows: Sequence[Sequence[int]]) -> TokenBatch:
    ids, mask = _pad(rows, _pad_id(tokenizer), "left")
    last = torch.full((len(rows),), ids.shape[1] - 1, dtype=torch.long)
    return TokenBatch(ids, mask, last)


def encode_targets(
    tokenizer, template: Template, pairs: Sequence[Pair], include_stop: bool = False
) -> tuple[TokenBatch, AnswerTargets]:
    """Right-pad prompt + answer (+ ``template.stop`` if ``include_stop``) per pair, each within the token limit."""
    if not pairs:
        raise TaskError("encode_targets: no pairs")
    seqs, lasts, targets = [], [], []
    for pair in pairs:
        prompt_ids, answer_ids = pair_tokens(tokenizer, template, pair, include_stop)
        seqs.append(prompt_ids + answer_ids)
        lasts.append(len(prompt_ids) - 1)
        targets.append(answer_ids)
    ids, mask = _pad(seqs, _pad_id(tokenizer), "right")
    target_ids, target_mask = _pad(targets, 0, "right")
    return TokenBatch(ids, mask, torch.tensor(lasts)), AnswerTargets(target_ids, target_mask.bool())


def encode_continuations(tokenizer, shared: str, suffixes: Sequence[str]) -> tuple[list[int], TokenBatch]:
    """Tokens of ``shared``, and right-padded, each suffix's tokens as they stand in ``shared + suffix``.

    ``last_index[i]`` is row i's last real suffix token. Raises
    :class:`TemplateTokenizationError` where a suffix would merge with ``shared``'s last token.
    """
    if not suffixes:
        raise ValueError("encode_continuations: no suffixes")
    shared_ids = _ids(tokenizer, shared)
    rows = [split_answer_tokens(tokenizer, shared, suffix)[1] for suffix in suffixes]
    ids, mask = _pad(rows, _pad_id(tokenizer), "right")
    return shared_ids, TokenBatch(ids, mask, mask.sum(1) - 1)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id
