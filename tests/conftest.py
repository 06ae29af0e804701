import pytest

from tests.helpers import tiny_bridge

KINDS = ["gemma3", "gpt2", "llama"]


@pytest.fixture(scope="module", params=KINDS)
def any_model(request):
    """Each tiny architecture in turn."""
    return tiny_bridge(request.param)


@pytest.fixture(scope="module")
def gemma_tiny():
    return tiny_bridge("gemma3")
