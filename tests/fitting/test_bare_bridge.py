"""A bridge's hook-free components stepped around in a fit step: the same values, hooks still fire, slots given back."""

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module
from transformer_lens.model_bridge.generalized_components.linear import LinearBridge

from headsteer.fitting.bare_bridge import bare_components, bridge_slots
from headsteer.fitting.forward import PrefixCachedForward
from headsteer.fitting.from_layer import FromLayer
from tests.fitting.test_from_layer import PAIRS, loss_and_grad, per_row_layers, prepared
from tests.helpers import tiny_bridge


@pytest.fixture(scope="module", params=["gemma3", "gpt2", "llama"])
def bridge(request):
    return tiny_bridge(request.param)


def _calls(monkeypatch, cls) -> list[int]:
    """Count calls of ``cls.forward`` (on the class: a hook on an instance would keep that instance wrapped)."""
    calls: list[int] = []
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


def _slot_holders(model) -> dict[tuple[int, str], nn.Module]:
    return {(id(s.parent), s.name): s.parent._modules[s.name] for s in bridge_slots(model.blocks)}


@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_a_step_skips_hook_free_components_and_keeps_the_values_and_gradients(bridge, loss, monkeypatch):
    """The plan steps around components (fewer LinearBridge calls) and gives what every component gives."""
    layers = per_row_layers(bridge)
    bare, wrapped = PrefixCachedForward(), PrefixCachedForward()
    loss_and_grad(bridge, bare, layers, loss)
    loss_and_grad(bridge, wrapped, layers, loss)
    assert prepared(bare).bare, "no slot found in a bridge"
    prepared(wrapped).bare = ()
    prepared(bare).fused = prepared(wrapped).fused = {}  # every block as the model runs it (Gemma 3's: by hand)
    calls = _calls(monkeypatch, LinearBridge)
    got = loss_and_grad(bridge, bare, layers, loss, seed=1)
    calls_bare = len(calls)
    want = loss_and_grad(bridge, wrapped, layers, loss, seed=1)
    assert calls_bare < len(calls) - calls_bare
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_a_hooked_component_stays_in_place_and_its_hook_sees_each_step(monkeypatch):
    """A user's hook inside block b (a hook point, or a plain torch hook) still fires, with Δ's effect in its input."""
    model = tiny_bridge("gemma3")
    layers = torch.full((len(PAIRS),), 0)
    forward = PrefixCachedForward()
    loss_and_grad(model, forward, layers)
    top = model.cfg.n_layers - 1
    seen: dict[str, list[torch.Tensor]] = {"hook point": [], "torch hook": []}
    model.blocks[top].mlp.hook_out.add_hook(lambda act, hook: seen["hook point"].append(act.detach()))
    handle = model.blocks[top].attn.register_forward_hook(lambda m, a, out: seen["torch hook"].append(a))
    try:
        for seed in (0, 1):
            loss_and_grad(model, forward, layers, seed=seed)
    finally:
        model.blocks[top].mlp.hook_out.remove_hooks()
        handle.remove()
    assert len(seen["hook point"]) == len(seen["torch hook"]) == 2
    assert not torch.equal(*seen["hook point"]), "the hooked MLP's output did not change with Δ"


def test_deltas_own_hook_keeps_its_attention_wrapped():
    """Δ's hook on hook_z (the output projection's input) keeps that attention and projection, and nothing else."""
    model = tiny_bridge("llama")
    slots = bridge_slots(model.blocks)
    already = [s for s in slots if s.hooked()]  # the bridge's own capture hooks on some norms
    z = model.blocks[1].attn.hook_z
    z.add_hook(lambda act, hook: act)
    try:
        with bare_components(slots):
            kept = [s for s in slots if s.parent._modules[s.name] is s.component]
            stepped = [s for s in slots if s.parent._modules[s.name] is s.wrapped]
    finally:
        z.remove_hooks()
    by_delta = [s for s in kept if s not in already]
    assert sorted(s.name for s in by_delta) == ["o_proj", "self_attn"]
    assert all(z in s.inside for s in by_delta)
    assert len(stepped) == len(slots) - len(kept) > len(slots) / 2
    assert all(s.component is s.parent._modules[s.name] for s in slots)  # all given back


def test_every_slot_gets_its_component_back_even_after_an_error():
    model = tiny_bridge("gemma3")
    before = _slot_holders(model)
    with pytest.raises(RuntimeError, match="inside"), bare_components(bridge_slots(model.blocks)):
        assert _slot_holders(model) != before
        raise RuntimeError("inside")
    assert _slot_holders(model) == before


def test_global_module_hooks_leave_every_component_in_place():
    model = tiny_bridge("gemma3")
    before = _slot_holders(model)
    handle = torch_module.register_module_forward_hook(lambda m, a, out: None)
    try:
        with bare_components(bridge_slots(model.blocks)):
            assert _slot_holders(model) == before
    finally:
        handle.remove()


def test_no_slots_outside_a_bridge():
    assert bridge_slots([nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))]) == ()


def test_a_plan_whose_bare_run_differs_keeps_the_components_without_a_warning(monkeypatch, recwarn):
    """Where stepping around does not reproduce the forward, the plan runs every component, still block by block."""
    model = tiny_bridge("gemma3")
    right = FromLayer.hidden

    def off_when_bare(self, model, delta):
        out = right(self, model, delta)
        return out + 1e-2 if self.bare else out

    monkeypatch.setattr(FromLayer, "hidden", off_when_bare)
    layers = per_row_layers(model)
    forward = PrefixCachedForward()
    got = loss_and_grad(model, forward, layers)
    assert isinstance(prepared(forward), FromLayer) and prepared(forward).bare == ()
    assert not [w for w in recwarn if "runs every block" in str(w.message)]
    want = loss_and_grad(model, PrefixCachedForward(from_layer=False), layers)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
