"""Both model kinds, one behaviour: the same weights give the same numbers as a TransformerBridge and as a
HookedTransformer (TransformerLens 3.x), a Δ moves between them, soft caps and bf16 work on either."""

import pytest
import torch

import headsteer as hs
from headsteer.backends import BRIDGE, HOOKED, model_kind
from headsteer.errors import ConfigError
from headsteer.fitting.forward import PrefixCachedForward, naive_scored_logits
from tests.conftest import MODEL_KINDS, NO_HOOKED
from tests.fitting.test_forward import loss_and_grad
from tests.helpers import tiny_bridge, tiny_hf_model, tiny_hooked, tiny_model

QA = hs.get_template("qa")
TRAIN = [hs.Pair("hot", "cold"), hs.Pair("good morning", "bonjour madame"), hs.Pair("big", "small")]
ARCHITECTURES = ["gemma3", "gemma2", "gpt2", "llama"]  # gemma2: soft-capped logits


def test_a_bridge_is_recognised():
    assert model_kind(tiny_bridge("gpt2")).name == BRIDGE


@NO_HOOKED
def test_a_hooked_transformer_is_recognised():
    assert model_kind(tiny_hooked("gpt2")).name == HOOKED


@NO_HOOKED
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_same_weights_and_delta_give_the_same_logits_under_both_kinds(arch):
    """Left-padded prompts, Δ at each one's last token: HookedTransformer (unprocessed) == TransformerBridge."""
    bridge, hooked = tiny_bridge(arch), tiny_hooked(arch)
    delta = torch.randn(bridge.cfg.n_heads, bridge.cfg.d_head, generator=torch.Generator().manual_seed(0))
    iv = hs.Intervention(delta, 1, hs.ModelSignature.of(bridge), "random")
    tokens = hs.encode_prompts(bridge.tokenizer, QA, ["hot", "good morning", "up"])
    logits = {}
    for model in (bridge, hooked):
        with torch.no_grad(), iv.applied(model, tokens.last_index, tokens.prompt_len):
            logits[model_kind(model).name] = model(tokens.input_ids, attention_mask=tokens.attention_mask)[:, -1]
    torch.testing.assert_close(logits[HOOKED], logits[BRIDGE], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits[BRIDGE], hs.next_token_logits(bridge, tokens), atol=1e-3)  # Δ moved them


@NO_HOOKED
@pytest.mark.parametrize("trained_on", ["bridge", "hooked"])
def test_a_delta_saved_from_one_kind_loads_and_runs_on_the_other(tmp_path, trained_on):
    models = {"bridge": tiny_bridge("llama"), "hooked": tiny_hooked("llama")}
    other = models["hooked" if trained_on == "bridge" else "bridge"]
    fitted = hs.fit(models[trained_on], TRAIN, QA, hs.FitConfig(layer=1, steps=5, lr=0.5), progress=False)
    fitted.intervention.save(tmp_path / "iv")
    loaded = hs.Intervention.load(tmp_path / "iv", other)  # the signature lets the same weights through
    inputs = ["hot", "big", "up"]
    assert hs.generate(other, inputs, [loaded], max_new_tokens=3) == hs.generate(
        models[trained_on], inputs, [fitted.intervention], max_new_tokens=3
    )


@pytest.mark.parametrize("model_kind_name", MODEL_KINDS)
@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_the_fast_path_scores_soft_capped_logits_exactly(model_kind_name, loss):
    """Gemma 2's final_logit_softcapping: the streamed NLL's value and gradient equal the full forward's."""
    model = tiny_model(model_kind_name, "gemma2")
    assert model_kind(model).unembedding(model).softcap == 2.0
    ref_loss, ref_grad = loss_and_grad(naive_scored_logits, model, loss)
    got_loss, got_grad = loss_and_grad(PrefixCachedForward(), model, loss)
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-4, atol=1e-6)


@NO_HOOKED
def test_a_processed_hooked_transformer_fits_and_steers_like_the_unprocessed_weights():
    """from_pretrained's default processing (norms folded, weights and unembedding centred, value biases folded)
    changes no log-probability, so a Δ fitted on the bridge steers the processed model the same way."""
    bridge, processed = tiny_bridge("gpt2"), tiny_hooked("gpt2", processed=True)
    assert processed.cfg.normalization_type == "LNPre"
    fitted = hs.fit(bridge, TRAIN, QA, hs.FitConfig(layer=1, steps=5, lr=0.5), progress=False).intervention
    tokens = hs.encode_prompts(bridge.tokenizer, QA, ["hot", "big"])
    log_probs = [torch.log_softmax(hs.next_token_logits(m, tokens, [fitted]), -1) for m in (bridge, processed)]
    torch.testing.assert_close(log_probs[1], log_probs[0], rtol=1e-4, atol=1e-4)
    ref_loss, ref_grad = loss_and_grad(naive_scored_logits, processed, "first_token")
    got_loss, got_grad = loss_and_grad(PrefixCachedForward(), processed, "first_token")
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-4, atol=1e-5)


# bf16 vs fp32 on the tiny Gemma 3, 30 steps (measured on CPU, torch 2.13: Δ within 0.7 % (bridge) and 1.0 %
# (HookedTransformer) in relative norm, each step's objective within 0.2 %); the bounds leave room for other builds.
BF16_DELTA_RTOL = 0.03
BF16_OBJECTIVE_RTOL = 0.01


@pytest.mark.parametrize("model_kind_name", MODEL_KINDS)
def test_a_bf16_fit_tracks_the_fp32_fit(model_kind_name):
    """The model in bf16, Δ and the optimiser in fp32: the fit follows the fp32 one within the stated bounds."""
    pairs = hs.split_task(hs.load_task("builtin/antonym"), n_train=10, seed=0)[0]
    config = hs.FitConfig(layer=1, steps=30, gamma=0.001, lam=0.001)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model(model_kind_name, "gemma3", dtype=dtype)
        assert next(model.parameters()).dtype == dtype
        results[dtype] = hs.fit(model, pairs, QA, config, progress=False)
    full, half = results[torch.float32], results[torch.bfloat16]
    assert half.intervention.delta.dtype == torch.float32
    error = (half.intervention.delta - full.intervention.delta).norm() / full.intervention.delta.norm()
    assert error < BF16_DELTA_RTOL
    torch.testing.assert_close(
        torch.tensor(half.history["objective"].values),
        torch.tensor(full.history["objective"].values),
        rtol=BF16_OBJECTIVE_RTOL,
        atol=0.0,
    )


@NO_HOOKED
def test_peft_baselines_say_a_hooked_transformer_holds_no_hugging_face_model():
    from headsteer.baselines.peft import PEFTConfig, train_peft

    with pytest.raises(ConfigError, match="HookedTransformer does not hold"):
        train_peft(tiny_hooked("llama"), TRAIN, QA, PEFTConfig(method="lora", steps=1))


@pytest.mark.parametrize(
    "call",
    [
        lambda m: hs.fit(m, TRAIN, QA, hs.FitConfig(layer=1, steps=1), progress=False),
        lambda m: hs.generate(m, ["hot"]),
        lambda m: hs.evaluate_pairs(m, TRAIN, QA, progress=False),
    ],
    ids=["fit", "generate", "evaluate_pairs"],
)
def test_a_model_of_another_kind_is_refused_by_name(call):
    with pytest.raises(ConfigError, match="takes a TransformerLens model .* got GPT2LMHeadModel.*wrap_model"):
        call(tiny_hf_model("gpt2"))


def test_a_key_value_cache_the_prefix_left_empty_is_refused_with_the_versions():
    """A TransformerLens that does not hand transformers' layers the cache (4.3 with transformers 5.24) fills none."""
    from types import SimpleNamespace

    from transformers.cache_utils import DynamicLayer

    from headsteer.backends import _check_key_value_layers

    with pytest.raises(ConfigError, match="left its key/value cache empty: TransformerLens .* transformers"):
        _check_key_value_layers(SimpleNamespace(layers=[DynamicLayer()]))
