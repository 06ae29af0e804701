"""Where an experiment's units of work run: in this process, or on Ray actors that each load the model once.

An experiment (a sweep, a method table) splits its work into *units* (a
seed's layers; a (task, seed) cell's methods) and a ``work(model, unit)``
function that yields the unit's results. :class:`Workers` runs every unit and
hands each result, in this (the driver's) process, to ``done``: that is where
the experiment merges it into its results file
(:class:`headsteer.paper.results.ResultsFile`), so the file has one writer per
driver whatever runs the units.

* :class:`LocalWorkers`: the model in this process; units in order, each
  result handed on as soon as it is yielded (a killed run loses only the
  result being computed).
* :class:`RayWorkers` (``pip install "headsteer[ray]"``): ``n_workers`` Ray
  actors, each loading the model once (on a GPU when the cluster has them)
  and running units one at a time with ``threads`` CPU threads; results come
  back as units finish. An actor whose process dies is restarted (loading
  the model again) and its unit is run again, up to ``retries`` times; a
  unit's results reach ``done`` only once the whole unit is finished, so
  nothing is lost or handed on twice. Rerunning the command resumes from the
  results file as before.

An experiment takes a model or a :class:`Workers` (:func:`as_workers`); what
its results file records about the model (name and fingerprint, :func:`headsteer.paper.results.model_settings`)
comes from the workers, so the driver need not load the weights.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, Union

from headsteer.errors import ConfigError
from headsteer.paper.experiment import check_count
from headsteer.paper.results import model_settings

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

UnitT = TypeVar("UnitT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class ModelInfo:
    """What a driver needs to know of the workers' model: what results record of it, and its layers."""

    settings: dict[str, str]  # name and fingerprint (model_settings)
    n_layers: int

    @classmethod
    def of(cls, model: TransformerBridge) -> ModelInfo:
        return cls(model_settings(model), int(model.cfg.n_layers))


class Workers(ABC):
    """Runs ``work(model, unit)`` for every unit and hands each result to ``done`` in this process."""

    @property
    @abstractmethod
    def model(self) -> ModelInfo:
        """The model every worker holds."""

    @abstractmethod
    def run(
        self,
        units: Sequence[UnitT],
        work: Callable[[TransformerBridge, UnitT], Iterable[ResultT]],
        done: Callable[[ResultT], None],
    ) -> None:
        """``done(result)`` for every result of every unit (a unit's results in order)."""


@dataclass(frozen=True)
class LocalWorkers(Workers):
    """The driver's own model: units in order, each result handed on as it is yielded."""

    bridge: TransformerBridge

    @property
    def model(self) -> ModelInfo:
        return ModelInfo.of(self.bridge)

    def run(
        self,
        units: Sequence[UnitT],
        work: Callable[[TransformerBridge, UnitT], Iterable[ResultT]],
        done: Callable[[ResultT], None],
    ) -> None:
        for unit in units:
            for result in work(self.bridge, unit):
                done(result)


# A model, or the workers that hold copies of one: what every experiment takes.
ModelOrWorkers = Union["TransformerBridge", Workers]


def as_workers(model: ModelOrWorkers) -> Workers:
    """``model`` itself if it is workers; a model runs in this process."""
    return model if isinstance(model, Workers) else LocalWorkers(model)


# ---- Ray ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model: as ``headsteer.models.open_model(name, cache_dir)`` would (None: the default).

    ``dtype``: the weights' precision; each worker runs on its own GPU where Ray gave it one, else on CPU.
    """

    name: str | None = None
    cache_dir: str | None = None
    dtype: str = "float32"


@dataclass(frozen=True)
class RayConfig:
    """Where and how many Ray workers run.

    Attributes:
        address: a running cluster (``ray start --head`` prints it; ``"auto"``: the one on this machine),
            or None to start a cluster in this process with this machine's cores.
        n_workers: actors, each with its own copy of the model (None: one per GPU of the cluster, else
            its CPUs // ``threads``; never more than there are units).
        threads: CPU threads of each actor (torch's intra-op threads; Ray reserves as many CPUs for it),
            so actors beside each other never oversubscribe the cores.
        retries: times a unit is run again on a restarted actor after its actor's process died.
    """

    address: str | None = None
    n_workers: int | None = None
    threads: int = 1
    retries: int = 3

    def __post_init__(self) -> None:
        if self.n_workers is not None:
            check_count(self, "n_workers", self.n_workers, 1)
        check_count(self, "threads", self.threads, 1)
        check_count(self, "retries", self.retries, 0)


def set_threads(threads: int) -> None:
    """Limit this process's torch (and OpenMP/MKL) to ``threads`` CPU threads."""
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)


class _Actor:
    """One Ray worker: loads the model once, then runs units."""

    def __init__(self, source: ModelSource, threads: int) -> None:
        import torch

        from headsteer.models import Placement, load_from, open_model

        set_threads(threads)
        placement = Placement("cuda" if torch.cuda.is_available() else "cpu", source.dtype)
        self.bridge = load_from(open_model(source.name, source.cache_dir, placement))

    def info(self) -> ModelInfo:
        return ModelInfo.of(self.bridge)

    def run(self, work: Callable[[TransformerBridge, UnitT], Iterable[ResultT]], unit: UnitT) -> list[ResultT]:
        return list(work(self.bridge, unit))


def _ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError('--ray needs Ray: pip install "headsteer[ray]"') from None
    return ray


class RayWorkers(Workers):
    """Units on Ray actors, each holding the model (see the module docstring). Actors start on first use."""

    def __init__(self, source: ModelSource, config: RayConfig = RayConfig()) -> None:
        self.source, self.config = source, config
        self._actors: list = []
        self._info: ModelInfo | None = None

    @property
    def model(self) -> ModelInfo:
        if self._info is None:
            self._start(1)
        assert self._info is not None
        return self._info

    def run(
        self,
        units: Sequence[UnitT],
        work: Callable[[TransformerBridge, UnitT], Iterable[ResultT]],
        done: Callable[[ResultT], None],
    ) -> None:
        if not units:
            return
        ray = _ray()
        self._start(min(self._wanted(), len(units)))
        pending: dict = {}  # ObjectRef -> the actor running it
        queue, idle = list(units), list(self._actors)
        while queue or pending:
            while queue and idle:
                actor = idle.pop()
                pending[actor.run.remote(work, queue.pop(0))] = actor
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready[0])
            for result in ray.get(ready[0]):  # raises once a unit's retries are spent
                done(result)
            idle.append(actor)

    def shutdown(self) -> None:
        """Stop the actors (a cluster this process started stops when it exits)."""
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def _wanted(self) -> int:
        if self.config.n_workers is not None:
            return self.config.n_workers
        resources = _ray().cluster_resources()
        gpus = int(resources.get("GPU", 0))
        return gpus or max(1, int(resources.get("CPU", 1)) // self.config.threads)

    def _check_fits(self, n: int, resources: dict[str, float]) -> None:
        """Refuse ``n`` actors the whole cluster could never place at once (Ray would wait for them forever)."""
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        where = f"the Ray cluster at {self.config.address}" if self.config.address else "this process's Ray cluster"
        if n * self.config.threads > cpus:
            raise ConfigError(
                f"{n} Ray workers × {self.config.threads} threads (--ray-workers, --ray-threads) need "
                f"{n * self.config.threads} CPUs; {where} has {cpus}: ask for fewer"
            )
        if gpus and n > gpus:
            raise ConfigError(f"{n} Ray workers (--ray-workers) need one GPU each; {where} has {gpus}: ask for fewer")

    def _start(self, n: int) -> None:
        """At least ``n`` actors, each with the model loaded; every actor must hold the same model."""
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.config.address, include_dashboard=False)
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) else 0
        self._check_fits(n, resources)
        actor_class = ray.remote(
            num_cpus=self.config.threads,
            num_gpus=gpus,
            max_restarts=self.config.retries,
            max_task_retries=self.config.retries,
        )(_Actor)
        fresh = [actor_class.remote(self.source, self.config.threads) for _ in range(n - len(self._actors))]
        infos = ray.get([actor.info.remote() for actor in fresh])
        self._actors += fresh
        for info in infos:
            if self._info is None:
                self._info = info
            elif info != self._info:
                raise ConfigError(
                    f"Ray workers loaded different models for {self.source.name or 'the default model'}: "
                    f"{info.settings} and {self._info.settings}; give every node the same model files"
                )
