"""A small OpinionQA directory in the real layout (info.csv + <ATTRIBUTE>_data.json per wave), for tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

WORDS = ["hot", "cold", "big", "small", "up", "down", "old", "new", "day", "night"]


def write_opinion_dir(root: Path, n_questions: int = 16, seed: int = 0) -> Path:
    """Two waves of questions answered by INCOME, CREGION and POLIDEOLOGY groups (both have a "Refused" group)."""
    rng = random.Random(seed)
    groups = {
        "INCOME": ["$100,000 or more", "Refused"],
        "CREGION": ["Northeast", "South"],
        "POLIDEOLOGY": ["Moderate", "Refused"],
    }
    for wave in (1, 2):
        folder = root / f"American_Trends_Panel_W{wave}"
        folder.mkdir(parents=True)
        info, data = [], {a: {} for a in groups}
        for i in range(n_questions // 2):
            key = f"Q{i}_W{wave}"
            options = [*rng.sample(WORDS, rng.choice([2, 3, 4])), "Refused"]
            question = " ".join(rng.sample(WORDS, 5))
            info.append({"key": key, "question": question, "references": repr(options)})
            for attribute, names in groups.items():
                entry = {"MC_options": options, "question_text": question}
                for name in names:
                    entry[name] = {o: float(rng.randint(0, 50)) for o in options}
                    entry[name][options[0]] += 1.0  # every group answers something
                data[attribute][key] = entry
        pd.DataFrame(info).to_csv(folder / "info.csv")
        for attribute, entries in data.items():
            (folder / f"{attribute}_data.json").write_text(json.dumps(entries))
    return root
