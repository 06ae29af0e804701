"""The stability-path figure shows the heads chosen earliest on the path, not the heads every weak penalty keeps."""

import pandas as pd

from headsteer import plots
from headsteer.plots.head_maps import earliest_chosen

STRENGTHS = [0.5, 0.1, 0.01]  # strongest first; at 0.01 every head is on, as at a real map's chosen penalty


def path_of(on_from: dict[tuple[int, int], float]) -> pd.DataFrame:
    """Two resamples and the full sample; head (layer, head) is on at every strength ≤ on_from[head]."""
    rows = [
        {"sample": sample, "strength": strength, "layer": layer, "head": head, "norm": float(strength <= start)}
        for sample in (0, 1, 2)
        for strength in STRENGTHS
        for (layer, head), start in on_from.items()
    ]
    return pd.DataFrame(rows).assign(task="t")


def test_the_earliest_chosen_heads_come_first_not_the_first_in_model_order():
    path = path_of({(0, 0): 0.01, (0, 1): 0.01, (3, 2): 0.1, (9, 1): 0.5})
    freq = path[path["sample"] > 0].assign(on=lambda t: t["norm"] > 0)
    freq = freq.groupby(["layer", "head", "strength"], as_index=False)["on"].mean()
    assert earliest_chosen(freq, 2) == [(9, 1), (3, 2)]
    figure = plots.stability_path(path, region=[0.5], threshold=0.75, top=2)
    assert [trace.name for trace in figure.data if trace.name] == ["L9.H1", "L3.H2"]
