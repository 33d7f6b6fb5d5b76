"""Who scores the candidates: this process (`--workers 0`) or a pool of Ray actors.

Both pools take a list of architectures and yield `(arch, result)` pairs as results arrive,
so the driver records each score the moment it exists. `make_pool` builds the one a search
asks for, and `LazyPool` builds it only once there is a candidate to score.

Ray: each actor is one process holding the supernet once. The weights and the scoring images
(decoded and preprocessed once, by the driver, for every input size of the search) are
`ray.put` once, as numpy arrays: Ray's object store keeps one copy per node, which every actor
of that node maps zero-copy, and each actor process receives the references once
(`EvolveScorer.setup`); nothing large travels per candidate, and actors read no files, so a
node needs the installed package but not the data set. With `gpus_per_worker`, each actor asks
Ray for that share of a GPU (0.5: two actors per GPU) and scores on the GPU Ray gives it. Each actor sets
`torch.set_num_threads(threads_per_worker)` itself (Ray's OMP_NUM_THREADS only holds for
fresh worker processes, and more threads than cores makes every actor wait on the others).
Candidates are dispatched as actors free up (`ray.wait`), not in fixed batches.

A worker process that dies (killed, out of memory) loses nothing: the candidate it held goes
back to the front of the queue and is dispatched to the next free actor, while Ray restarts
the dead actor in place (`max_restarts`); once it has loaded the supernet again (its `setup`
call answers) it rejoins the pool. A candidate that kills `MAX_ATTEMPTS` workers in a row
stops the search with an error rather than killing workers forever; the history keeps every
score, so the search resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Mapping

from picodet_nas.arch import Arch
from picodet_nas.errors import UserError
from picodet_nas.utils.ray_session import RaySession  # shared with nas retrain --sweep; still importable here

from .scoring import CandidateScorer, NetworkScorer, ScoringData

MAX_ATTEMPTS = 3  # workers one candidate may take down before the search stops
ACTOR_MAX_RESTARTS = 4  # restarts of each actor process
RECOVERY_TIMEOUT_S = 600.0  # how long a restarting actor may take to answer again


class InProcessPool:
    """Scores in this process, one candidate after another: `--workers 0`, no Ray.

    Ray 2.60 has no `local_mode` any more, and a search on a laptop or in a notebook should
    not need a cluster runtime. The scorer is built on first use."""

    workers = 1

    def __init__(self, make_scorer: Callable[[], CandidateScorer]):
        import torch

        self._make_scorer = make_scorer
        self._scorer: CandidateScorer | None = None
        self._threads = torch.get_num_threads()  # the scorer sets its own; given back on close

    def score(self, archs: Iterable[Arch]) -> Iterator[tuple[Arch, dict[str, Any]]]:
        if self._scorer is None:
            self._scorer = self._make_scorer()
        for arch in archs:
            yield arch, {**self._scorer.score(arch), "attempts": 1}

    def close(self) -> None:
        import torch

        self._scorer = None
        torch.set_num_threads(self._threads)


class EvolveScorer:
    """The Ray actor (`ray::EvolveScorer` in `ps`): a `CandidateScorer` in its own process.

    The weights arrive through `setup(state)` rather than the constructor: Ray resolves the
    ObjectRef to the numpy arrays in the object store (zero-copy) either way, but an actor with
    `max_restarts` whose constructor takes an object-store argument cannot be restarted once
    that object is evicted (Ray cannot re-fetch a constructor argument that is gone), and Ray
    logs an error-level line for every such actor. The pool calls `setup` once per actor
    process, after creation and after each restart, before the actor gets a candidate."""

    def __init__(self, space_definition: Mapping[str, Any], num_classes: int, data: Mapping[str, Any], threads: int,
                 device: str = "cpu"):
        import torch

        torch.set_num_threads(threads)  # Ray's OMP_NUM_THREADS holds only for fresh worker processes
        self.args = (dict(space_definition), num_classes, dict(data), threads, device)
        self.scorer: CandidateScorer | None = None

    def setup(self, state: Mapping[str, Any], images: Mapping[str, Any] | None = None) -> str:
        space_definition, num_classes, data, threads, device = self.args
        self.scorer = CandidateScorer(space_definition, num_classes, state, data, threads, device=device,
                                      images=images)
        return self.scorer.worker

    def gpu_ids(self) -> list:
        """The GPUs Ray assigned to this actor (logical ids)."""
        import ray

        return list(ray.get_gpu_ids())

    def score(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        if self.scorer is None:
            raise RuntimeError("EvolveScorer.score called before setup")
        return self.scorer.score(arch)


class RayPool:
    """`workers` Ray actors, each holding the supernet once, fed as they free up."""

    def __init__(self, session: RaySession, *, workers: int | None, threads_per_worker: int,
                 space_definition: Mapping[str, Any], num_classes: int, state: Mapping[str, Any],
                 data: ScoringData, log: logging.Logger, images: Mapping[str, Any] | None = None,
                 device: str = "cpu", gpus_per_worker: float = 0.0):
        """`workers` None: one per CPU of the Ray instance (divided by the threads per worker), or
        with `gpus_per_worker`, as many as its GPUs hold. `images`: `NetworkScorer.decoded_images`
        (None: each actor decodes the files of `data` itself)."""
        self.log = log
        self.session = session
        ray = session.ray
        threads = max(1, int(threads_per_worker))
        if workers is not None:
            self.workers = int(workers)
        elif gpus_per_worker > 0:
            self.workers = max(1, int(session.gpus() / gpus_per_worker + 1e-9))
        else:
            self.workers = max(1, session.cpus() // threads)
        numpy_state = {k: v.detach().cpu().numpy() for k, v in state.items()}
        self._state_ref = ray.put(numpy_state)  # once; every actor maps the same read-only arrays
        self._images_ref = ray.put(images) if images is not None else None
        actor_cls = ray.remote(num_cpus=threads, num_gpus=gpus_per_worker or 0, max_restarts=ACTOR_MAX_RESTARTS,
                               max_task_retries=0)(EvolveScorer)
        self.actors = [actor_cls.remote(dict(space_definition), num_classes, data.to_dict(), threads, device)
                       for _ in range(self.workers)]
        # Actors join the pool as their setup finishes: the first scores while the others load.
        self._starting: dict[Any, tuple[Any, float]] = {}
        for actor in self.actors:
            self._start(actor, time.monotonic())
        self._idle: deque = deque()
        log.info("%d Ray worker(s), %d thread(s)%s each, scoring on %s", self.workers, threads,
                 f" and {gpus_per_worker:g} GPU" if gpus_per_worker else "", device)

    def _start(self, actor, since: float) -> None:
        self._starting[actor.setup.remote(self._state_ref, self._images_ref)] = (actor, since)

    def score(self, archs: Iterable[Arch]) -> Iterator[tuple[Arch, dict[str, Any]]]:
        ray = self.session.ray
        from ray.exceptions import RayActorError

        queue: deque[tuple[Arch, int]] = deque((a, 0) for a in archs)
        pending: dict[Any, tuple[Any, Arch, int]] = {}  # future -> (actor, arch, attempt)
        while queue or pending:
            while queue and self._idle:
                actor = self._idle.popleft()
                arch, attempts = queue.popleft()
                pending[actor.score.remote(arch.to_dict())] = (actor, arch, attempts + 1)
            if not pending and not self._starting:
                raise RuntimeError("every Ray worker has died; the scores so far are saved, resume the search "
                                   "with --resume")
            ready, _ = ray.wait(list(pending) + list(self._starting), num_returns=1)
            future = ready[0]
            if future in self._starting:
                self._setup_answered(future)
                continue
            actor, arch, attempts = pending.pop(future)
            try:
                result = _get(ray, future)
            except RayActorError:  # the process died: the candidate goes to the next free worker
                if attempts >= MAX_ATTEMPTS:
                    raise RuntimeError(f"candidate {arch.key()} took down {attempts} Ray workers; the scores so far "
                                       f"are saved (resume with --resume)") from None
                self.log.warning("a Ray worker died while scoring %s (attempt %d); the candidate goes to the next "
                                 "free worker", arch.key(), attempts)
                queue.appendleft((arch, attempts))
                self._start(actor, time.monotonic())  # answers once Ray has restarted it
                continue
            self._idle.append(actor)
            yield arch, {**result, "attempts": attempts}

    def _setup_answered(self, future) -> None:
        """An actor's `setup` answered: it joins the pool, is asked again while Ray is still
        restarting it, or is dropped when it cannot come back."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        actor, since = self._starting.pop(future)
        try:
            worker = _get(self.session.ray, future)
        except ActorUnavailableError:
            if time.monotonic() - since > RECOVERY_TIMEOUT_S:
                self._drop(actor, "did not come back")
            else:
                time.sleep(0.2)
                self._start(actor, since)
            return
        except RayActorError:
            self._drop(actor, "died for good (restarts used up)")
            return
        self.log.info("Ray worker %s ready", worker)
        self._idle.append(actor)

    def _drop(self, actor, why: str) -> None:
        self.log.warning("a Ray worker %s; continuing with the others", why)
        if actor in self.actors:
            self.actors.remove(actor)

    def close(self) -> None:
        """Kill the actors; the Ray session belongs to the caller."""
        for actor in self.actors:
            try:
                self.session.ray.kill(actor)
            except Exception:
                pass
        self.actors = []


def _get(ray, future):
    """`ray.get`, with an exception raised inside the actor re-raised as itself when it is a
    UserError (a bad image or file: its one-line message, not a Ray traceback)."""
    from ray.exceptions import RayTaskError

    try:
        return ray.get(future)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise


class LazyPool:
    """Creates the real pool (the Ray actors, or the in-process scorer) on the first candidate
    to score: resuming a search whose candidates are all scored loads no supernet anywhere."""

    def __init__(self, make: Callable[[], Any]):
        self._make = make
        self._pool = None

    def score(self, archs: Iterable[Arch]) -> Iterator[tuple[Arch, dict[str, Any]]]:
        archs = list(archs)
        if not archs:
            return iter(())
        if self._pool is None:
            self._pool = self._make()
        return self._pool.score(archs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def make_pool(*, workers: int | None, threads_per_worker: int, device: str, gpus_per_worker: float,
              session: RaySession | None, space_definition: Mapping[str, Any], num_classes: int,
              state: Mapping[str, Any], data: ScoringData, input_sizes: Iterable[int],
              log: logging.Logger) -> LazyPool:
    """The pool of a search: in this process for `workers` 0, else Ray actors in `session`,
    whose scoring images the driver decodes once and shares through the object store."""
    if workers == 0:
        return LazyPool(lambda: InProcessPool(lambda: CandidateScorer(space_definition, num_classes, state, data,
                                                                      threads_per_worker, device=device)))

    def make() -> RayPool:
        images = NetworkScorer(data).decoded_images(input_sizes)
        return RayPool(session, workers=workers, threads_per_worker=threads_per_worker,
                       space_definition=space_definition, num_classes=num_classes, state=state, data=data,
                       log=log, images=images, device=device, gpus_per_worker=gpus_per_worker)

    return LazyPool(make)
