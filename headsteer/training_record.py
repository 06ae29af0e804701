"""What an intervention was trained on, so that scoring it can leave those examples out.

A :class:`TrainingRecord` holds the exact training pairs in order (or, for a
fit over pre-tokenised prompts, only their number), the seeded split they came
from when there was one (``split_task(task, n_train, split_seed)``), and the
hash and source of the task file split. It is stored in the intervention's
JSON as::

    "training": {"n_examples": 10, "pairs": [{"input": "hot", "output": "cold"}, ...],
                 "pairs_sha256": "...", "split_seed": 0, "n_train": 10,
                 "task_sha256": "...", "task_source": "/data/antonym.json"}

``pairs_sha256`` is ``tasks.pairs_sha256(pairs)``, written for a quick
comparison and checked against the pairs on reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from headsteer.errors import ArtifactError
from headsteer.strict_json import Kind, check_object, child, is_kind
from headsteer.tasks import Pair, Task, pairs_sha256, split_task

# Where the record sits in an intervention's JSON: its errors name fields by this path.
PATH = "training"
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_STR = (str, type(None))
SPEC: dict[str, Kind] = {
    "n_examples": int,
    "pairs": (list, type(None)),
    "pairs_sha256": _OPTIONAL_STR,
    "split_seed": _OPTIONAL_INT,
    "n_train": _OPTIONAL_INT,
    "task_sha256": _OPTIONAL_STR,
    "task_source": _OPTIONAL_STR,
}


@dataclass(frozen=True)
class TrainingRecord:
    """The examples Δ was fitted on.

    Attributes:
        n_examples: how many training examples (rows) the fit used.
        pairs: the exact training pairs, in order; None when the fit saw only
            pre-tokenised prompts (``fit_encoded``), whose inputs it cannot name.
        split_seed, n_train: the pairs are the training part of
            ``split_task(task, n_train, split_seed)``; both None when the pairs
            were given directly.
        task_sha256, task_source: ``Task.sha256`` and ``Task.source`` of the
            task that was split; both None when unknown.
    """

    n_examples: int
    pairs: tuple[Pair, ...] | None = None
    split_seed: int | None = None
    n_train: int | None = None
    task_sha256: str | None = None
    task_source: str | None = None

    def __post_init__(self) -> None:
        if not is_kind(self.n_examples, int) or self.n_examples < 1:
            raise ArtifactError(f"field 'training.n_examples' must be an integer >= 1, got {self.n_examples!r}")
        if self.pairs is not None and len(self.pairs) != self.n_examples:
            raise ArtifactError(
                f"field 'training.n_examples' is {self.n_examples} but 'training.pairs' holds {len(self.pairs)} pairs"
            )
        if (self.split_seed is None) != (self.n_train is None):
            raise ArtifactError("fields 'training.split_seed' and 'training.n_train' must be both set or both null")
        if self.n_train is not None and self.n_train != self.n_examples:
            raise ArtifactError(
                f"field 'training.n_train' is {self.n_train} but the record holds {self.n_examples} training examples"
            )
        if (self.task_sha256 is None) != (self.task_source is None):
            raise ArtifactError(
                "fields 'training.task_sha256' and 'training.task_source' must be both set or both null"
            )

    @classmethod
    def of_pairs(cls, pairs: Sequence[Pair]) -> TrainingRecord:
        """The record of a fit on ``pairs`` given directly."""
        return cls(len(pairs), tuple(pairs))

    def with_split(self, task: Task, n_train: int, seed: int) -> TrainingRecord:
        """This record, known to be the training part of ``split_task(task, n_train, seed)``.

        Checked, not trusted: the split is redone and must give exactly the recorded pairs.
        """
        train, _ = split_task(task, n_train=n_train, seed=seed)
        if self.pairs != tuple(train):
            raise ArtifactError(
                f"the recorded training pairs are not the training part of task {task.name!r} split with "
                f"n_train={n_train}, seed={seed}"
            )
        return replace(self, split_seed=seed, n_train=n_train, task_sha256=task.sha256, task_source=task.source)

    def combined(self, other: TrainingRecord) -> TrainingRecord:
        """The record of a sum of two Δ's: each one's examples in turn; the sum comes from no single split."""
        pairs = None if self.pairs is None or other.pairs is None else self.pairs + other.pairs
        return TrainingRecord(self.n_examples + other.n_examples, pairs)

    @property
    def pairs_sha256(self) -> str | None:
        return None if self.pairs is None else pairs_sha256(self.pairs)

    def training_inputs(self) -> frozenset[str]:
        """Every training input; refused for a record that holds no pairs."""
        if self.pairs is None:
            raise ArtifactError(
                f"the training record holds no inputs (a fit over {self.n_examples} pre-tokenised prompts), "
                "so no pair can be shown to be held out"
            )
        return frozenset(p.input for p in self.pairs)

    def to_dict(self) -> dict[str, object]:
        pairs = None if self.pairs is None else [{"input": p.input, "output": p.output} for p in self.pairs]
        return {
            "n_examples": self.n_examples,
            "pairs": pairs,
            "pairs_sha256": self.pairs_sha256,
            "split_seed": self.split_seed,
            "n_train": self.n_train,
            "task_sha256": self.task_sha256,
            "task_source": self.task_source,
        }

    @classmethod
    def from_dict(cls, data: object) -> TrainingRecord:
        """Read what ``to_dict`` wrote, exactly; an ArtifactError names any field at fault."""
        fields = check_object(data, SPEC, PATH, ArtifactError)
        pairs = (
            None
            if fields["pairs"] is None
            else tuple(_pair(item, child(child(PATH, "pairs"), i)) for i, item in enumerate(fields["pairs"]))
        )
        record = cls(
            fields["n_examples"],
            pairs,
            fields["split_seed"],
            fields["n_train"],
            fields["task_sha256"],
            fields["task_source"],
        )
        if fields["pairs_sha256"] != record.pairs_sha256:
            raise ArtifactError(
                f"field {child(PATH, 'pairs_sha256')!r} is {fields['pairs_sha256']!r} but the recorded pairs hash to "
                f"{record.pairs_sha256!r}: the pairs were edited"
            )
        return record


def _pair(item: object, path: str) -> Pair:
    fields = check_object(item, {"input": str, "output": str}, path, ArtifactError)
    return Pair(fields["input"], fields["output"])
