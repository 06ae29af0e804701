"""Every bad input in the catalogue (tests/cli/bad_inputs.py) exits 2 with one line holding its expected text,
and docs/bad-inputs.md shows exactly what a user sees today."""

import pytest

from tests.cli.bad_inputs import PROBES, render, run_all
from tests.helpers import REPO

DOC = REPO / "docs" / "bad-inputs.md"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("probes"))


@pytest.mark.parametrize("index", range(len(PROBES)), ids=[p.what for p in PROBES])
def test_each_bad_input_is_one_line_naming_the_fault(results, index):
    probe, status, line, _ = results[index]
    assert status == 2, (probe.what, line)
    assert line.count("error:") == 1, line
    assert probe.expect in line, (probe.what, line)


def test_the_catalogue_page_is_current(results):
    assert DOC.read_text() == render([(p, cmd, line) for p, _, line, cmd in results]), (
        "docs/bad-inputs.md is stale: python -m tests.cli.bad_inputs docs/bad-inputs.md"
    )
