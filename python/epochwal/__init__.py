"""epochwal for Python: crash-safe checkpoints of PyTorch training loops.

Write and resume (the Rust log, bound with PyO3)::

    from epochwal import Checkpointer

    with Checkpointer("runs/exp1", keep_records=3) as ckpt:
        restored = ckpt.load_latest(model=model, optimizer=opt)
        start = restored.epoch if restored else 0
        for epoch in range(start, 10):
            loss = train_one_epoch(model, opt)
            ckpt.save(epoch=epoch + 1, step=0, model=model, optimizer=opt, loss=loss)

Read any log without the compiled part (pure Python, written from FORMAT.md)::

    import epochwal.reader
    rec = epochwal.reader.open("runs/exp1").latest()

The names of the compiled part (`Checkpointer`, `open_log`, ...) are loaded on
first use, so that `epochwal.reader` works on a tree where it is not built.
"""

from __future__ import annotations

from typing import Any

from .reader import FormatError, Log, Record, UnsupportedSchema, open, xxh3_64

__all__ = [
    "Checkpointer",
    "DistributedCheckpointer",
    "Restored",
    "EpochwalError",
    "open_log",
    "LogView",
    "open",
    "Log",
    "Record",
    "FormatError",
    "UnsupportedSchema",
    "xxh3_64",
]

_NATIVE = {"EpochwalError"}
_LOG = {"open_log", "LogView"}
_TORCH = {"Checkpointer", "Restored"}
_DISTRIBUTED = {"DistributedCheckpointer"}


def __getattr__(name: str) -> Any:
    if name in _NATIVE:
        from . import _native

        return getattr(_native, name)
    if name in _LOG:
        from . import log as _log

        return getattr(_log, name)
    if name in _TORCH:
        from . import torch as _torch

        return getattr(_torch, name)
    if name in _DISTRIBUTED:
        from . import distributed as _distributed

        return getattr(_distributed, name)
    raise AttributeError(f"module 'epochwal' has no attribute {name!r}")
