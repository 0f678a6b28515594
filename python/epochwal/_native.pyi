"""Typed stubs of `epochwal._native`, the PyO3 binding of the Rust log.

Most code uses `epochwal.Checkpointer` instead; this module takes tensors
already flattened to `(name, dtype, shape, buffer)`:

    import numpy as np
    from epochwal import _native

    w = _native.Writer("runs/raw", keep_records=3)
    a = np.arange(6, dtype=np.float32)
    seq = w.save([("x", "F32", [2, 3], a.view(np.uint8))], "{}", epoch=1, step=1)
    w.wait(); w.close()
    rec = _native.open_log("runs/raw").latest()
    name, dtype, shape, buf = rec.tensors()[0]
    np.frombuffer(buf, dtype=np.float32).reshape(shape)   # zero-copy view
"""

from os import PathLike
from typing import Any, Dict, List, Optional, Tuple, Union

SCHEMA_VERSION: int
DTYPES: List[Tuple[str, int]]

class EpochwalError(Exception):
    """Every failure of the log; the message names the file or tensor and the cause."""

class TensorBuffer:
    """A record's tensor bytes, lent read-only through the buffer protocol."""
    def __len__(self) -> int: ...

class RecordView:
    """One validated record, mapped read-only."""
    @property
    def seq(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def step(self) -> int: ...
    @property
    def step_in_epoch(self) -> int: ...
    @property
    def loss(self) -> Optional[float]: ...
    @property
    def val_loss(self) -> Optional[float]: ...
    @property
    def unix_ns(self) -> int: ...
    @property
    def train_time_ms(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def meta(self) -> str: ...
    @property
    def job(self) -> Tuple[str, int, int]: ...
    def tensors(self) -> List[Tuple[str, str, List[int], TensorBuffer]]: ...

class LogView:
    """A log opened for reading (no lock)."""
    @property
    def dir(self) -> str: ...
    def records(self) -> List[Dict[str, Any]]: ...
    def latest(self) -> Optional[RecordView]: ...
    def by_sequence(self, seq: int) -> RecordView: ...

def open_log(dir: Union[str, "PathLike[str]"]) -> LogView: ...
def rank_listing(dir: Union[str, "PathLike[str]"], rank: int) -> str:
    """JSON of what rank `rank`'s log in `dir` holds (intact and damaged records)."""
def choose_common(listings: List[str], world_size: int) -> str:
    """JSON of the job's decision (FORMAT.md §8.3) from every rank's listing."""

class Writer:
    """The single writer of a log directory (holds its LOCK)."""
    def __init__(
        self,
        dir: Union[str, "PathLike[str]"],
        *,
        segment_bytes: int = 0,
        keep_records: int = 10,
        keep_bytes: int = 0,
        keep_every_epochs: int = 0,
        keep_best: int = 0,
        min_seconds_between: float = 0.0,
        replicate: Optional[str] = None,
        job_id: str = "",
        world_size: int = 0,
        rank: int = 0,
        job_starts: Optional[str] = None,
    ) -> None: ...
    @property
    def dir(self) -> str: ...
    @property
    def url(self) -> Optional[str]: ...
    @property
    def closed(self) -> bool: ...
    def recovered(self) -> Optional[RecordView]: ...
    def due(self) -> bool: ...
    def save(
        self,
        tensors: List[Tuple[str, str, List[int], Any]],
        meta: str,
        *,
        epoch: int,
        step: int,
        step_in_epoch: int = 0,
        loss: Optional[float] = None,
        val_loss: Optional[float] = None,
        train_time_ms: int = 0,
        force: bool = False,
    ) -> Optional[int]: ...
    def wait(self) -> Optional[int]: ...
    def notify(self, message: str) -> bool: ...
    def remote_seq(self) -> Optional[int]: ...
    def close(self, upload_timeout: float = 30.0) -> Optional[int]: ...

def restore_from_set(
    url: str,
    dir: str,
    *,
    rank: int,
    world_size: int,
    allow_http: Optional[bool] = None,
    only_if_empty: bool = False,
) -> Optional[Dict[str, Any]]:
    """Restores rank `rank`'s record named by the job's set pointer
    (`url + "/SET"`, FORMAT.md §7.10) into `dir`, a directory holding no
    log. Returns {"set_step", "step", "epoch", "sequence",
    "remote_sequence", "object", "job_id"}, or None when the job URL holds
    no set pointer and nothing of this rank. With `only_if_empty` a
    directory that already holds a log is left alone (None).

        got = restore_from_set("s3://bucket/job", "J/rank-00001", rank=1, world_size=2)
    """
    ...

def cli(argv: List[str]) -> int:
    """Runs the `epochwal` command line (`argv[0]` is the program name) and
    returns its exit code; `python -m epochwal` and the `epochwal` command
    call it:

        _native.cli(["epochwal", "verify", "runs/exp1"])   # 0: clean
    """
