import pytest

from tests.helpers import has_hooked_transformer, tiny_bridge, tiny_model

KINDS = ["gemma3", "gpt2", "llama"]
# TransformerLens 4.0 removed HookedTransformer: its cases are skipped there, run under 3.x.
NO_HOOKED = pytest.mark.skipif(not has_hooked_transformer(), reason="this TransformerLens has no HookedTransformer")
MODEL_KINDS = [pytest.param("bridge", id="bridge"), pytest.param("hooked", id="hooked", marks=NO_HOOKED)]


@pytest.fixture(
    scope="module",
    params=[pytest.param((m.values[0], k), id=f"{m.id}-{k}", marks=m.marks) for m in MODEL_KINDS for k in KINDS],
)
def any_model(request):
    """Each tiny architecture in turn, as a TransformerBridge and (TransformerLens 3.x) as a HookedTransformer."""
    return tiny_model(*request.param)


@pytest.fixture(scope="module", params=MODEL_KINDS)
def gemma_kinds(request):
    """The tiny Gemma 3 as each model kind the installed TransformerLens has."""
    return tiny_model(request.param, "gemma3")


@pytest.fixture(scope="module")
def gemma_tiny():
    return tiny_bridge("gemma3")
