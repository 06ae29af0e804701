"""Test helpers: tiny random-init models (no downloads) as a TransformerBridge or a HookedTransformer."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from headsteer.backends import hooked_transformer_class
from headsteer.models import wrap_model

REPO = Path(__file__).resolve().parents[1]  # the checkout: tests may run from any folder

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
EXTRA_WORDS = ["Q", "A", ":", "hotter", "ter", "\n"]
# Opinion prompts' words, appended after the rest so the earlier words keep their ids (and tests their models).
OPINION_WORDS = ["Question", "Answer", "B", "C", "D", "E", "."]
VOCAB_SIZE = 512


def _words() -> list[str]:
    words: set[str] = set(EXTRA_WORDS)
    for item in files("headsteer").joinpath("data").iterdir():
        if item.name.endswith(".json"):
            for pair in json.loads(item.read_text(encoding="utf-8")):
                words.update(pair["input"].split() + pair["output"].split())
    return SPECIALS + sorted(words) + [w for w in OPINION_WORDS if w not in words]


def save_tiny_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer over the built-in tasks' words; prepends <bos>."""
    vocab = {w: i for i, w in enumerate(_words())}
    assert len(vocab) <= VOCAB_SIZE
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
    )
    fast.padding_side = "left"
    fast.save_pretrained(str(directory))
    return directory


TINY_CONFIGS = {
    "gemma3": lambda: Gemma3TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=12,
        max_position_embeddings=128,
        sliding_window=16,
        architectures=["Gemma3ForCausalLM"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Soft-capped logits (Gemma 2's final_logit_softcapping), small enough that the cap bends them.
    "gemma2": lambda: Gemma2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=128,
        sliding_window=16,
        final_logit_softcapping=2.0,
        attn_logit_softcapping=5.0,
        architectures=["Gemma2ForCausalLM"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=128,
        n_embd=32,
        n_layer=3,
        n_head=4,
        architectures=["GPT2LMHeadModel"],
        bos_token_id=1,
        eos_token_id=2,
    ),
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        architectures=["LlamaForCausalLM"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


def tiny_hf_model(kind: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(TINY_CONFIGS[kind](), attn_implementation="eager")
    with torch.no_grad():  # larger weights than the default init, so Δ visibly moves the logits
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return model.eval()


@cache
def _tokenizer_dir() -> Path:
    import tempfile

    return save_tiny_tokenizer(Path(tempfile.mkdtemp(prefix="headsteer-tok-")))


def tiny_tokenizer():
    return AutoTokenizer.from_pretrained(str(_tokenizer_dir()))


def tiny_bridge(kind: str = "gemma3", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A TransformerBridge around a tiny random ``kind`` model, named ``tiny-{kind}``."""
    return wrap_model(tiny_hf_model(kind, seed).to(dtype), tiny_tokenizer(), f"tiny-{kind}")


def tiny_hooked(kind: str = "gemma3", seed: int = 0, dtype: torch.dtype = torch.float32, processed: bool = False):
    """A HookedTransformer (TransformerLens 3.x) with ``tiny_bridge(kind, seed)``'s weights, named ``tiny-{kind}``."""
    from tests.tiny_hooked import hooked_from_hf

    return hooked_from_hf(tiny_hf_model(kind, seed).to(dtype), tiny_tokenizer(), f"tiny-{kind}", processed)


def tiny_model(model_kind: str, kind: str = "gemma3", seed: int = 0, dtype: torch.dtype = torch.float32):
    """``tiny_bridge`` or ``tiny_hooked`` by ``model_kind`` ("bridge" or "hooked")."""
    return {"bridge": tiny_bridge, "hooked": tiny_hooked}[model_kind](kind, seed, dtype)


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens has HookedTransformer (3.x; 4.0 removed it)."""
    return hooked_transformer_class() is not None


def save_tiny_model(kind: str, directory: Path) -> Path:
    """Save a tiny model + tokenizer as a local directory ``load_model`` can read."""
    tiny_hf_model(kind).save_pretrained(str(directory))
    tiny_tokenizer().save_pretrained(str(directory))
    return directory
