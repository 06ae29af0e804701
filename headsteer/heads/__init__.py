"""Which heads a task uses: one layer's head tables (:mod:`.layer`), and the model-wide map (:mod:`.maps`).

* :mod:`headsteer.heads.layer` — one layer: head-norm tables, the regularization path
  of independent fits, switch-on order, top-k overlap with function-vector heads.
* :mod:`headsteer.heads.maps` — every layer: :func:`~headsteer.heads.maps.head_map`
  returns a :class:`~headsteer.heads.maps.HeadMap` (norms, switch-on strengths, the
  λ path with stability selection over resamples, held-out causal shares, function-
  vector effects), built from :mod:`.entry`, :mod:`.path`, :mod:`.resample`,
  :mod:`.causal` and :mod:`.stability`.

The analysis fits and tabulates; it draws nothing (:mod:`headsteer.plots` draws the tables).
This package imports only the light parts; ``from headsteer.heads.maps import head_map``
loads the map (and the function-vector baseline it compares with).
"""

from headsteer.heads.layer import (
    DEFAULT_PATH,
    fit_regularization_path,
    head_labels,
    head_overlap,
    head_table,
    path_jobs,
    path_table,
    switch_on,
)
from headsteer.heads.stability import (
    Stability,
    fv_agreement,
    jaccard,
    marked_heads,
    selection_frequencies,
    set_overlap,
    stability_selection,
    top_heads,
)

__all__ = [
    "DEFAULT_PATH",
    "Stability",
    "fit_regularization_path",
    "fv_agreement",
    "head_labels",
    "head_overlap",
    "head_table",
    "jaccard",
    "marked_heads",
    "path_jobs",
    "path_table",
    "selection_frequencies",
    "set_overlap",
    "stability_selection",
    "switch_on",
    "top_heads",
]
