"""Tiny HookedTransformers (TransformerLens 3.x) with the weights of the tiny Hugging Face test models.

The config is TransformerLens' own conversion of the Hugging Face config where
it has one for an arbitrary checkpoint (GPT-2, Llama: ``get_pretrained_model_config``
of a local folder); Gemma's are keyed by official name in TransformerLens, so
they are written here field for field as TransformerLens writes Gemma 2 2B's and
Gemma 3 270M's, from the tiny config's values. The weights go through
TransformerLens' converters (``get_pretrained_state_dict`` with the model in
hand). Nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
import tempfile

GEMMA_ARCHITECTURES = {"Gemma2ForCausalLM", "Gemma3ForCausalLM"}


def hooked_from_hf(hf_model, tokenizer, name: str, processed: bool = False):
    """A HookedTransformer of ``hf_model``'s weights (unprocessed, as ``from_pretrained_no_processing``).

    ``processed``: fold the norms, centre the writing weights and the unembedding, fold the value
    biases, as ``HookedTransformer.from_pretrained`` does by default.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    dtype = next(hf_model.parameters()).dtype
    with tempfile.TemporaryDirectory(prefix="headsteer-hooked-") as folder:
        config = copy.deepcopy(hf_model.config)
        if config.model_type == "gpt2" and "n_ctx" not in config.to_dict():
            # TransformerLens 3.x reads GPT-2's n_ctx, which transformers 5 no longer writes (hub configs have it).
            config.n_ctx = config.n_positions
        config.save_pretrained(folder)  # a local folder is what TransformerLens converts offline
        architecture = hf_model.config.architectures[0]
        if architecture in GEMMA_ARCHITECTURES:
            cfg_dict = _gemma_config(hf_model.config)
            cfg_dict.update(init_weights=False, device="cpu", dtype=dtype, default_prepend_bos=True)
            if processed:
                cfg_dict["normalization_type"] = "RMSPre"
            cfg = HookedTransformerConfig.from_dict(cfg_dict)
        else:
            cfg = loading.get_pretrained_model_config(folder, device="cpu", dtype=dtype, fold_ln=processed)
        cfg.model_name = name
        state = loading.get_pretrained_state_dict(folder, cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer)
    model.load_and_process_state_dict(
        state,
        fold_ln=processed,
        center_writing_weights=processed and cfg.normalization_type in ("LN", "LNPre"),
        center_unembed=processed and cfg.output_logits_soft_cap <= 0,
        fold_value_biases=processed,
        refactor_factored_attn_matrices=False,
    )
    return model.eval()


def _gemma_config(hf) -> dict:
    """TransformerLens' Gemma 2 / Gemma 3 config fields (as for gemma-2-2b, gemma-3-270m) from ``hf``'s values."""
    rope = hf.rope_parameters
    is_gemma3 = hf.architectures[0] == "Gemma3ForCausalLM"
    cfg = {
        "d_model": hf.hidden_size,
        "d_head": hf.head_dim,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_activation,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": math.sqrt(hf.query_pre_attn_scalar),  # TransformerLens' default √d_head is Gemma's only at 256
        "n_key_value_heads": hf.num_key_value_heads,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "window_size": hf.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in hf.layer_types],
        "original_architecture": hf.architectures[0],
    }
    if is_gemma3:
        cfg.update(
            use_qk_norm=True,
            rotary_base=rope["full_attention"]["rope_theta"],
            rotary_base_local=rope["sliding_attention"]["rope_theta"],
        )
    else:
        cfg.update(
            rotary_base=rope["rope_theta"],
            attn_scores_soft_cap=hf.attn_logit_softcapping or -1.0,
            output_logits_soft_cap=hf.final_logit_softcapping or -1.0,
        )
    return cfg
