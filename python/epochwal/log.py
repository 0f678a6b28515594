"""Reading a log through the Rust reader (the same code as `epochwal verify`).

    import epochwal
    log = epochwal.open_log("runs/exp1")
    log.records()[-1]["seq"]            # headers only, oldest first
    rec = log.latest()                  # the record recovery chooses (None: empty)
    rec.tensors["model.fc.weight"]      # numpy view of the read-only mapping, no copy
    rec.meta["optimizer"]["param_groups"], rec.epoch, rec.step

numpy has no bfloat16 or float8: those tensors are shown as unsigned
integers of their size (the raw bits); `rec.torch_tensors()` gives torch views
of every dtype.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Union

import numpy as np

from . import _native

_NUMPY = {"BOOL": "?", "U8": "u1", "I8": "i1", "F8_E4M3": "u1", "F8_E5M2": "u1",
          "I16": "<i2", "U16": "<u2", "F16": "<f2", "BF16": "<u2", "I32": "<i4",
          "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8"}


class Record:
    """One validated record; its arrays view the mapping (read-only)."""

    def __init__(self, view: "_native.RecordView") -> None:
        self.view = view
        self.seq: int = view.seq
        self.epoch: int = view.epoch
        self.step: int = view.step
        self.step_in_epoch: int = view.step_in_epoch
        self.loss: Optional[float] = view.loss
        self.val_loss: Optional[float] = view.val_loss
        self.kind: str = view.kind
        self.path: str = str(view.path)
        self.schema_version: int = view.schema_version
        text = view.meta
        self.meta: Dict[str, Any] = json.loads(text) if text else {}
        self.dtypes: Dict[str, str] = {}
        self.tensors: Dict[str, np.ndarray] = {}
        for name, dtype, shape, buf in view.tensors():
            self.dtypes[name] = dtype
            self.tensors[name] = np.frombuffer(buf, dtype=_NUMPY[dtype]).reshape(shape)

    def torch_tensors(self) -> Dict[str, Any]:
        """Every tensor as a torch tensor of its own dtype, viewing the mapping
        (read-only: clone before changing one)."""
        from .torch import _Decoder

        dec = _Decoder(self.view)
        return {name: dec.tensor(name, copy=False) for name in self.dtypes}

    def __repr__(self) -> str:
        return f"<epochwal.Record seq={self.seq} epoch={self.epoch} step={self.step} kind={self.kind}>"


class LogView:
    """A log directory opened for reading: no lock, any number beside the writer."""

    def __init__(self, directory: Union[str, "os.PathLike[str]"]) -> None:
        self._view = _native.open_log(os.fspath(directory))

    def records(self) -> List[Dict[str, Any]]:
        """Headers of every record (seq, epoch, step, loss, val_loss, unix_ns,
        segment, offset, payload_len, schema_version), oldest first."""
        return self._view.records()

    def latest(self) -> Optional[Record]:
        """The record recovery chooses, or None for an empty log."""
        v = self._view.latest()
        return None if v is None else Record(v)

    def by_sequence(self, seq: int) -> Record:
        """The record with sequence number `seq`."""
        return Record(self._view.by_sequence(seq))


def open_log(directory: Union[str, "os.PathLike[str]"]) -> LogView:
    """Opens `directory` for reading: `open_log(d).latest().tensors`."""
    return LogView(directory)
