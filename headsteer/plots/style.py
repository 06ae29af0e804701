"""The look every headsteer figure shares: colours, metric names, layout."""

from __future__ import annotations

from plotly.colors import qualitative

COLORS = qualitative.Plotly
MANY_COLORS = qualitative.Dark24  # the table's 13 methods need more than Plotly's 10
METRIC_LABELS = {
    "exact_match": "exact match",
    "first_token": "first-token accuracy",
    "kl": "KL(group ‖ model), nats (lower is better)",
    "kl_reverse": "KL(model ‖ group), nats (lower is better)",
}
LAYOUT = dict(template="plotly_white", font=dict(size=14), margin=dict(l=80, r=40, t=80, b=70))
