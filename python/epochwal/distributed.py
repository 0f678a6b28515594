"""Checkpoints of torch.distributed jobs: one epochwal log per rank, and a
restore that every rank takes from the same step.

Started by ``torchrun --nproc-per-node 2 train.py``::

    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from epochwal import DistributedCheckpointer

    dist.init_process_group("gloo")
    model = DDP(torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with DistributedCheckpointer("runs/job1", keep_records=3) as ckpt:
        restored = ckpt.load_latest(model=model, optimizer=opt)   # every rank calls it
        start = restored.step if restored else 0
        for step in range(start, 100):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            ckpt.save(epoch=0, step=step + 1, model=model, optimizer=opt)  # no collective

Rank ``r`` writes the ordinary log ``runs/job1/rank-0000r`` (FORMAT.md §8).
`load_latest` is the one collective: the ranks gather what each log holds
(``all_gather_object``), pick the newest step every rank holds intact on the
job's live branch, and each rank loads its own record of that step. A
`torch.distributed.optim.ZeroRedundancyOptimizer` is saved as its rank's
shard (the local optimizer's state), with no consolidation.

The loop must run at least one collective between two saves (DDP's
backward and ZeRO's step do): that is what keeps every rank's record of the
newest common step under retention (FORMAT.md §8.4).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from . import _native
from ._native import EpochwalError
from .torch import Checkpointer, Restored

__all__ = ["DistributedCheckpointer"]

_log = logging.getLogger("epochwal")

#: The fewest records a rank keeps (besides the abandoned ones): the one
#: being written, and the two before it, one of which every rank holds
#: (FORMAT.md §8.4).
MIN_KEEP_RECORDS = 3


def _is_zero(optimizer: Any) -> bool:
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
    except ImportError:  # torch built without distributed
        return False
    return isinstance(optimizer, ZeroRedundancyOptimizer)


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise EpochwalError(
            f"{name} is not set and torch.distributed is not initialized: pass rank= and "
            f"world_size=, start the script with torchrun, or call "
            f"torch.distributed.init_process_group() first")
    try:
        n = int(value)
    except ValueError:
        raise EpochwalError(f"{name}={value!r} is not an integer") from None
    if n < 0:
        raise EpochwalError(f"{name}={value!r} is negative")
    return n


def _dist() -> Optional[Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed
    return None


class DistributedCheckpointer(Checkpointer):
    """Crash-safe checkpoints of one rank of a torch.distributed job, in
    `job_directory/rank-<5 digits>`.

        ckpt = DistributedCheckpointer("runs/job1", keep_records=3)
        restored = ckpt.load_latest(model=ddp_model, optimizer=zero)  # collective
        ckpt.save(epoch=e, step=s, model=ddp_model, optimizer=zero)   # no collective
        ckpt.close()

    `rank` and `world_size` default to torch.distributed's (initialized),
    else the RANK and WORLD_SIZE environment variables; `job_id` to the
    TORCHELASTIC_RUN_ID variable, else "default". The other options are
    `Checkpointer`'s; `keep_records` is raised to at least 3 (0 keeps all),
    and `min_seconds_between` is refused: ranks would skip different steps,
    and the job needs every rank's record of a step.

    The log is opened (and its lock taken) by `load_latest`, which every
    rank calls once before its first `save`.
    """

    def __init__(
        self,
        job_directory: Union[str, "os.PathLike[str]"],
        *,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        job_id: Optional[str] = None,
        keep_records: Optional[int] = 10,
        min_seconds_between: float = 0.0,
        replicate: Union[None, str, Mapping[str, Any]] = None,
        **options: Any,
    ) -> None:
        dist = _dist()
        if dist is not None:
            if rank is not None and rank != dist.get_rank():
                raise EpochwalError(f"rank={rank} but torch.distributed says rank {dist.get_rank()}")
            if world_size is not None and world_size != dist.get_world_size():
                raise EpochwalError(f"world_size={world_size} but torch.distributed says "
                                    f"{dist.get_world_size()}")
            rank, world_size = dist.get_rank(), dist.get_world_size()
        if rank is None:
            rank = _env_int("RANK")
        if world_size is None:
            world_size = _env_int("WORLD_SIZE")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise EpochwalError(f"world_size must be an integer >= 1, not {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise EpochwalError(f"rank must be an integer in 0..{world_size - 1}, not {rank!r}")
        if min_seconds_between:
            raise EpochwalError(
                "min_seconds_between cannot be used by a multi-rank job: each rank would skip "
                "saves by its own clock, and the job resumes only from a step every rank saved; "
                "save every N steps instead")
        if keep_records is not None and keep_records < 0:
            raise EpochwalError(f"keep_records must be an integer >= 0 or None, not {keep_records!r}")
        self.job_directory = os.fspath(job_directory)
        self.rank: int = rank
        self.world_size: int = world_size
        self.job_id: str = job_id or os.environ.get("TORCHELASTIC_RUN_ID") or "default"
        self.directory = os.path.join(self.job_directory, f"rank-{rank:05d}")
        self._keep_records = keep_records or 0
        self._options: Dict[str, Any] = dict(options)
        self._job_url: Optional[str] = None
        self._allow_http: Optional[bool] = None
        if replicate is not None:
            # The JOB's URL: the native writer replicates rank r to
            # URL/rank-<r> and advances URL/SET (FORMAT.md §7.10).
            if isinstance(replicate, str):
                self._job_url = replicate
            elif isinstance(replicate, Mapping) and isinstance(replicate.get("url"), str):
                self._job_url = replicate["url"]
                allow = replicate.get("allow_http")
                self._allow_http = allow if isinstance(allow, bool) else None
            else:
                raise EpochwalError(f"replicate must be a URL or a dict with a \"url\", not {replicate!r}")
            self._options["replicate"] = replicate
        self._writer: Any = None
        self._branch: Optional[Dict[str, Any]] = None
        self._chosen: Optional["_native.RecordView"] = None
        self._stop = False
        self._ready_sent = False
        self._previous_handlers: Dict[int, Any] = {}
        self._started = 0.0
        self._train_ms_before = 0

    # -- the collective restore ------------------------------------------
    def _gather(self, listing: str) -> List[str]:
        dist = _dist()
        if dist is None:
            if self.world_size == 1:
                return [listing]
            raise EpochwalError(
                f"rank {self.rank}: load_latest gathers every rank's listing with "
                f"torch.distributed, which is not initialized (world size {self.world_size}); "
                f"call torch.distributed.init_process_group() first")
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, listing)
        return [str(x) for x in out]

    def load_latest(
        self,
        model: Optional[torch.nn.Module] = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        rng: bool = True,
        strict: bool = True,
    ) -> Optional[Restored]:
        """Every rank calls it once, before its first save (a collective).
        Restores, in place, this rank's record of the newest step that every
        rank holds intact on the job's live branch (FORMAT.md §8.3), and
        returns a `Restored`; None when the job starts from the beginning.
        Damaged or passed-over records are named in a WARNING of the
        "epochwal" logger (on rank 0). Raises an EpochwalError naming what
        each rank holds when no step is common or the world size changed.

            restored = ckpt.load_latest(model=ddp_model, optimizer=opt)
            start = restored.step if restored else 0
        """
        if self._writer is not None:
            raise EpochwalError(f"{self.directory}: load_latest was already called")
        if self._job_url is not None:
            # An empty rank directory is first restored from the job's set
            # pointer (its record of the newest step every rank made remote),
            # so that the listing every rank gathers includes it.
            _native.restore_from_set(self._job_url, self.directory, rank=self.rank,
                                     world_size=self.world_size, allow_http=self._allow_http,
                                     only_if_empty=True)
        listing = _native.rank_listing(self.directory, self.rank)
        listings = self._gather(listing)
        decision = json.loads(_native.choose_common(listings, self.world_size))
        mine = json.loads(listing)
        if "Resume" in decision:
            choice = decision["Resume"]
            notes = choice["notes"]
            record = choice["records"][self.rank]
            # Records after the chosen one lie on an abandoned branch (or are
            # not held by every rank): retention keeps them besides the
            # minimum, so that it never deletes the chosen record first.
            after = sum(1 for r in mine["records"] + mine["damaged"] if r["seq"] > record["seq"])
            branch = choice["next"]
            if notes and self.rank == 0:
                _log.warning("epochwal: job %s: resuming every rank from common step %d: %s",
                             self.job_directory, choice["step"], "; ".join(notes))
        else:
            fresh = decision["Fresh"]
            notes, record, after, branch = fresh["notes"], None, len(mine["records"]) + len(mine["damaged"]), fresh["next"]
            if notes and self.rank == 0:
                _log.warning("epochwal: job %s: %s", self.job_directory, "; ".join(notes))
        keep = self._keep_records
        if keep:
            keep = max(keep, MIN_KEEP_RECORDS) + after
        # A Checkpointer opens (and locks) the rank's log; this object takes
        # over its writer, so that signal handlers installed before stay.
        # The writer's set member learns every generation's start (with
        # where each rank's log stood), so that it never names a record of
        # a branch the job left, on any rank (FORMAT.md §7.10).
        opened = Checkpointer(self.directory, keep_records=keep, job_id=self.job_id,
                              world_size=self.world_size, rank=self.rank,
                              _job_starts=json.dumps(branch["starts"]), **self._options)
        self._writer = opened._writer
        self._branch = branch
        if record is None:
            self._chosen = None
        else:
            self._chosen = _native.open_log(self.directory).by_sequence(int(record["seq"]))
        self._started = opened._started
        zero = _is_zero(optimizer)
        restored = super().load_latest(model=model, optimizer=optimizer.optim if zero else optimizer,
                                       scheduler=scheduler, scaler=scaler, rng=rng, strict=strict)
        if zero and restored is not None:
            # The local optimizer's hyperparameters (lr, ...) back into ZeRO's
            # own param_groups, which ZeRO copies into it at every step.
            optimizer._sync_param_groups(optimizer.optim.param_groups, optimizer.param_groups)
        self._chosen = None
        return restored

    def _recovered(self) -> Optional["_native.RecordView"]:
        return self._chosen

    def _document(self, doc: Dict[str, Any]) -> None:
        assert self._branch is not None
        doc["distributed"] = {
            "generation": self._branch["generation"],
            "ordinal": self._branch["ordinal"] + 1,
            "starts": self._branch["starts"],
        }

    # -- save ------------------------------------------------------------
    def save(self, *, optimizer: Any = None, **kwargs: Any) -> Optional[int]:  # type: ignore[override]
        """As `Checkpointer.save`, with no collective; a ZeroRedundancyOptimizer
        is saved as this rank's shard.

            ckpt.save(epoch=e, step=s, model=ddp_model, optimizer=zero, loss=l)
        """
        if self._writer is None:
            raise EpochwalError(f"{self.directory}: call load_latest() (on every rank) before "
                                f"the first save")
        if _is_zero(optimizer):
            optimizer = optimizer.optim
        seq = super().save(optimizer=optimizer, **kwargs)
        if seq is not None and self._branch is not None:
            self._branch["ordinal"] += 1
        return seq

    def wait(self) -> Optional[int]:
        """As `Checkpointer.wait` (None before `load_latest`)."""
        return None if self._writer is None else super().wait()

    def close(self, upload_timeout: float = 30.0) -> Optional[int]:
        """As `Checkpointer.close` (nothing to do before `load_latest`)."""
        return None if self._writer is None else super().close(upload_timeout)

    @property
    def closed(self) -> bool:
        """Whether `close()` ran (False before `load_latest`)."""
        return self._writer is not None and bool(self._writer.closed)

    def notify(self, message: str) -> bool:
        """As `Checkpointer.notify` (False before `load_latest`)."""
        return False if self._writer is None else super().notify(message)

    def notify_watchdog(self) -> bool:
        """As `Checkpointer.notify_watchdog` (False before `load_latest`)."""
        return False if self._writer is None else super().notify_watchdog()

    def _ready(self, text: str) -> None:
        if self._writer is not None:
            super()._ready(text)
