"""0-shot and k-shot prompting built from the same training pairs a Δ is fitted on.

A k-shot prompt is the k demonstrations, each rendered by the template with
its answer and stop string, then a blank line, before the query:

    prompt_k(x) = Σ_j [prompt(x_j) + answer(y_j) + stop + "\\n"] + prompt(x)

e.g. ``Q: hot\\nA: cold\\n\\nQ: big\\nA: small\\n\\nQ: up\\nA:`` with the ``qa``
template. One fixed format for every task; nothing is tuned.
"""

from __future__ import annotations

from collections.abc import Sequence

from headsteer.prompts import Template
from headsteer.tasks import Pair

SEPARATOR = "\n"


def few_shot_template(template: Template, demos: Sequence[Pair]) -> Template:
    """``template`` with ``demos`` rendered before every query (0 demos: the template itself)."""
    if not demos:
        return template
    shots = "".join(
        template.format_prompt(d.input) + template.format_answer(d.output) + template.stop + SEPARATOR for d in demos
    )
    escaped = shots.replace("{", "{{").replace("}", "}}")
    return Template(f"{template.name}+{len(demos)}shot", escaped + template.prompt, template.answer, template.stop)
