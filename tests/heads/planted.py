"""A tiny GPT-2 with one planted head that can move the answer, and a decoy that cannot.

GPT-2 reads its residual stream only through LayerNorms, and a LayerNorm subtracts
the mean over features, so a vector along the all-ones direction never reaches any
reader: LN(x + c·1) = LN(x). The decoy head's output map writes only along that
direction, scaled so its output is as large as the planted head's on the training
prompts: as loud, but causally inert. The planted head's output map is tripled and
every other head's is scaled to 2%, so only the planted head's Δ moves the logits much.
"""

from __future__ import annotations

import torch

import headsteer as hs
from headsteer.hooks import hook_z_name, last_token_activations
from headsteer.models import wrap_model
from headsteer.prompts import encode_prompts
from tests.helpers import tiny_hf_model, tiny_tokenizer

LAYER, PLANTED, DECOY = 1, 2, 0
QA = hs.get_template("qa")


def planted_gpt2(train: list[hs.Pair]):
    """The model, with the decoy's output norm matched to the planted head's on ``train``'s prompts."""
    hf = tiny_hf_model("gpt2")
    width, n_heads = hf.config.n_embd, hf.config.n_head
    d_head = width // n_heads
    with torch.no_grad():
        for layer, block in enumerate(hf.transformer.h):
            w_o = block.attn.c_proj.weight  # Conv1D, [n_heads·d_head, width]: head h's output is z_h @ w_o[h's rows]
            for head in range(n_heads):
                rows = slice(head * d_head, (head + 1) * d_head)
                if (layer, head) == (LAYER, PLANTED):
                    w_o[rows] *= 3.0
                elif (layer, head) == (LAYER, DECOY):
                    w_o[rows] = torch.randn(d_head, 1) * torch.ones(1, width)  # along 1 only
                else:
                    w_o[rows] *= 0.02
    model = wrap_model(hf, tiny_tokenizer(), "tiny-gpt2-planted")
    tokens = encode_prompts(model.tokenizer, QA, [p.input for p in train])
    z = last_token_activations(model, tokens.input_ids, tokens.attention_mask, [hook_z_name(LAYER)])[0]
    w_o = hf.transformer.h[LAYER].attn.c_proj.weight
    with torch.no_grad():
        norms = [(z[:, h] @ w_o[h * d_head : (h + 1) * d_head]).norm(dim=-1).mean() for h in (PLANTED, DECOY)]
        w_o[DECOY * d_head : (DECOY + 1) * d_head] *= norms[0] / norms[1]
    return model


def output_norm(model, train: list[hs.Pair], head: int) -> float:
    """Mean norm of head ``head``'s output (z_h W_O^h) at layer LAYER over ``train``'s prompts."""
    tokens = encode_prompts(model.tokenizer, QA, [p.input for p in train])
    z = last_token_activations(model, tokens.input_ids, tokens.attention_mask, [hook_z_name(LAYER)])[0]
    d_head = model.cfg.d_head
    w_o = model.original_model.transformer.h[LAYER].attn.c_proj.weight.detach()
    return float((z[:, head] @ w_o[head * d_head : (head + 1) * d_head]).norm(dim=-1).mean())
