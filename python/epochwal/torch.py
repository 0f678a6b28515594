"""Checkpoints of PyTorch training loops on the epochwal log.

A complete loop::

    import torch
    from epochwal import Checkpointer

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    with Checkpointer("runs/exp1", keep_records=3) as ckpt:
        ckpt.install_signal_handlers()          # SIGTERM/SIGINT -> ckpt.stop_requested
        restored = ckpt.load_latest(model=model, optimizer=opt, scheduler=sched)
        start = restored.epoch if restored else 0
        for epoch in range(start, 50):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            ckpt.save(epoch=epoch + 1, step=epoch + 1, model=model, optimizer=opt,
                      scheduler=sched, loss=loss.item())
            if ckpt.stop_requested:
                break

What a record holds (FORMAT.md §4.5): every tensor of the model's
`state_dict()` (`model.<key>`), of the optimizer's (`optimizer.state.<i>.<key>`),
of the scheduler and scaler, the RNG states (`rng.torch`, `rng.cuda.<i>`,
numpy's key array) and `extra_tensors` (`extra.<name>`), each with its dtype
and shape, byte for byte; and one JSON document with everything else
(param_groups and hyperparameters, scheduler and scaler state, epoch, step,
data position, metrics, extra values, Python's and numpy's RNG).
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from . import _native
from ._native import EpochwalError

__all__ = ["Checkpointer", "Restored", "EpochwalError"]

FORMAT = "epochwal.torch"
FORMAT_VERSION = 1

_TORCH_TO_NAME: Dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.int64: "I64",
    torch.float64: "F64",
}
for _attr, _name in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
                     ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _attr):
        _TORCH_TO_NAME[getattr(torch, _attr)] = _name
_NAME_TO_TORCH: Dict[str, torch.dtype] = {v: k for k, v in _TORCH_TO_NAME.items()}
_NUMPY_TO_NAME: Dict[str, str] = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "float16": "F16", "int32": "I32", "uint32": "U32", "float32": "F32",
    "int64": "I64", "uint64": "U64", "float64": "F64",
}
_NAME_TO_NUMPY: Dict[str, str] = {v: k for k, v in _NUMPY_TO_NAME.items()}

# Markers of the JSON encoding (FORMAT.md §4.5): an object with exactly one
# of these keys stands for something JSON has no value for.
_TENSOR, _NDARRAY, _FLOAT, _TUPLE, _DICT = "__tensor__", "__ndarray__", "__float__", "__tuple__", "__dict__"
_MARKERS = {_TENSOR, _NDARRAY, _FLOAT, _TUPLE, _DICT}

Flat = Tuple[str, str, List[int], Any]


@dataclass
class Restored:
    """What `Checkpointer.load_latest` restored, besides the objects it
    loaded in place.

        restored = ckpt.load_latest(model=model, optimizer=opt)
        if restored:
            print(restored.seq, restored.epoch, restored.metrics)
    """

    seq: int
    epoch: int
    step: int
    step_in_epoch: int
    data_position: Any
    loss: Optional[float]
    val_loss: Optional[float]
    metrics: Dict[str, Any]
    extra: Dict[str, Any]
    extra_tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    path: str = ""
    job_id: Optional[str] = None
    world_size: Optional[int] = None
    rank: Optional[int] = None


class _Encoder:
    """Splits a nested value into JSON and named tensors (the pause: CPU
    tensors are lent by reference, CUDA tensors copied once to the host)."""

    def __init__(self) -> None:
        self.tensors: List[Flat] = []

    def tensor(self, name: str, t: torch.Tensor) -> Flat:
        if not isinstance(t, torch.Tensor):
            raise EpochwalError(f"tensor {name}: {type(t).__name__} is not a torch.Tensor")
        if t.is_meta or t.device.type == "meta":
            raise EpochwalError(
                f"tensor {name}: a meta tensor has no data to store (it was never "
                f"materialized; call model.to_empty(device=...) and initialize it first)")
        if t.layout != torch.strided:
            raise EpochwalError(
                f"tensor {name}: a {t.layout} (sparse) tensor cannot be stored; "
                f"store t.to_dense() instead")
        if t.is_quantized:
            raise EpochwalError(
                f"tensor {name}: a quantized tensor ({t.dtype}) cannot be stored; "
                f"store t.dequantize() or its int_repr() and scale instead")
        dtype = _TORCH_TO_NAME.get(t.dtype)
        if dtype is None:
            raise EpochwalError(f"tensor {name}: dtype {t.dtype} cannot be stored "
                                f"(stored: {', '.join(str(d) for d in _TORCH_TO_NAME)})")
        t = t.detach()
        if t.device.type != "cpu":
            # torch's own device-to-host copy, as torch.save does: the one
            # staging copy; the log copies from it.
            t = t.to("cpu", memory_format=torch.contiguous_format)
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        if not t.is_contiguous():
            t = t.contiguous()
        shape = list(t.shape)
        raw = t.reshape(-1).view(torch.uint8).numpy()
        return (name, dtype, shape, raw)

    def ndarray(self, name: str, a: np.ndarray) -> Flat:
        dtype = _NUMPY_TO_NAME.get(a.dtype.name)
        if dtype is None:
            raise EpochwalError(f"{name}: a numpy array of dtype {a.dtype} cannot be stored")
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        return (name, dtype, list(a.shape), a.reshape(-1).view(np.uint8))

    def encode(self, value: Any, path: str, int_keys: bool) -> Any:
        if isinstance(value, torch.Tensor):
            self.tensors.append(self.tensor(path, value))
            return {_TENSOR: path}
        if isinstance(value, np.ndarray):
            self.tensors.append(self.ndarray(path, value))
            return {_NDARRAY: path}
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            f = float(value)
            return f if math.isfinite(f) else {_FLOAT: repr(f)}
        if isinstance(value, tuple):
            return {_TUPLE: [self.encode(v, f"{path}.{i}", int_keys) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{path}.{i}", int_keys) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            plain = all(isinstance(k, str) for k in value) and not (len(value) == 1 and set(value) & _MARKERS)
            if plain:
                return {k: self.encode(v, f"{path}.{k}", int_keys) for k, v in value.items()}
            pairs = []
            for k, v in value.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)) or (isinstance(k, int) and not int_keys):
                    raise EpochwalError(
                        f"{path}: the dict key {k!r} ({type(k).__name__}) cannot be stored; "
                        f"keys must be strings")
                pairs.append([k, self.encode(v, f"{path}.{k}", int_keys)])
            return {_DICT: pairs}
        if isinstance(value, (torch.dtype, torch.device)):
            raise EpochwalError(f"{path}: a {type(value).__name__} ({value}) cannot be stored; "
                                f"store str(value) instead")
        raise EpochwalError(
            f"{path}: a value of type {type(value).__module__}.{type(value).__qualname__} cannot "
            f"be stored (JSON values, tuples, dicts, torch tensors and numpy arrays can)")


class _Decoder:
    """The inverse of `_Encoder`, over a record's tensors."""

    def __init__(self, record: "_native.RecordView") -> None:
        self.record = record
        self.tensors: Dict[str, Tuple[str, List[int], Any]] = {
            name: (dtype, shape, buf) for name, dtype, shape, buf in record.tensors()
        }

    def tensor(self, name: str, copy: bool) -> torch.Tensor:
        if name not in self.tensors:
            raise EpochwalError(f"{self.record.path}: record {self.record.seq} names tensor "
                                f"{name} in its document but does not hold it")
        dtype, shape, buf = self.tensors[name]
        tdtype = _NAME_TO_TORCH.get(dtype)
        if tdtype is None:
            raise EpochwalError(f"tensor {name}: dtype {dtype} has no torch type in this torch "
                                f"{torch.__version__}")
        count = math.prod(shape)
        if count == 0:
            return torch.empty(shape, dtype=tdtype)
        with warnings.catch_warnings():
            # The buffer is the read-only mapping: torch warns that it is not
            # writable. Views are only read (load_state_dict copies them).
            warnings.simplefilter("ignore")
            t = torch.frombuffer(buf, dtype=tdtype, count=count).reshape(shape)
        return t.clone() if copy else t

    def ndarray(self, name: str) -> np.ndarray:
        dtype, shape, buf = self.tensors[name]
        return np.frombuffer(buf, dtype=np.dtype(_NAME_TO_NUMPY[dtype]).newbyteorder("<")).reshape(shape).copy()

    def decode(self, value: Any, copy: bool) -> Any:
        if isinstance(value, list):
            return [self.decode(v, copy) for v in value]
        if isinstance(value, dict):
            if len(value) == 1:
                (k, v), = value.items()
                if k == _TENSOR:
                    return self.tensor(v, copy)
                if k == _NDARRAY:
                    return self.ndarray(v)
                if k == _FLOAT:
                    return float(v)
                if k == _TUPLE:
                    return tuple(self.decode(x, copy) for x in v)
                if k == _DICT:
                    return {kk: self.decode(vv, copy) for kk, vv in v}
            return {k: self.decode(v, copy) for k, v in value.items()}
        return value


def _options(value: Optional[int], what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EpochwalError(f"{what} must be an integer >= 0 or None, not {value!r}")
    return value


class Checkpointer:
    """Crash-safe checkpoints of a training loop in the log directory `directory`.

        with Checkpointer("runs/exp1", keep_records=3, keep_best=1) as ckpt:
            restored = ckpt.load_latest(model=model, optimizer=opt)
            ...
            ckpt.save(epoch=e, step=s, model=model, optimizer=opt, loss=l, val_loss=v)

    Options are the daemon's `[checkpoint]` keys: `segment_bytes` ("auto" or
    bytes), `keep_records`, `keep_bytes`, `keep_every_epochs`, `keep_best`
    (by `val_loss`), `min_seconds_between` (a save sooner than that after
    the previous one is skipped and returns None), and `replicate`: an
    object-store URL (`"s3://bucket/prefix"`) or a dict of `[replicate]`
    keys; with it an empty directory is first restored from the remote.
    `job_id`, `world_size`, `rank` mark one rank of a multi-rank job
    (`_job_starts` is internal: `DistributedCheckpointer` sets it).
    A second writer on the directory gets an EpochwalError naming the holder.
    """

    def __init__(
        self,
        directory: Union[str, "os.PathLike[str]"],
        *,
        segment_bytes: Union[str, int] = "auto",
        keep_records: Optional[int] = 10,
        keep_bytes: Optional[int] = None,
        keep_every_epochs: Optional[int] = None,
        keep_best: Optional[int] = 0,
        min_seconds_between: float = 0.0,
        replicate: Union[None, str, Mapping[str, Any]] = None,
        job_id: Optional[str] = None,
        world_size: Optional[int] = None,
        rank: Optional[int] = None,
        _job_starts: Optional[str] = None,
    ) -> None:
        if segment_bytes == "auto":
            seg = 0
        elif isinstance(segment_bytes, int) and not isinstance(segment_bytes, bool) and segment_bytes > 0:
            seg = segment_bytes
        else:
            raise EpochwalError(f"segment_bytes must be \"auto\" or a positive integer, not {segment_bytes!r}")
        if isinstance(replicate, str):
            rep: Optional[str] = json.dumps({"url": replicate})
        elif isinstance(replicate, Mapping):
            rep = json.dumps(dict(replicate))
        elif replicate is None:
            rep = None
        else:
            raise EpochwalError(f"replicate must be a URL or a dict of [replicate] keys, not {replicate!r}")
        self._writer = _native.Writer(
            os.fspath(directory),
            segment_bytes=seg,
            keep_records=_options(keep_records, "keep_records"),
            keep_bytes=_options(keep_bytes, "keep_bytes"),
            keep_every_epochs=_options(keep_every_epochs, "keep_every_epochs"),
            keep_best=_options(keep_best, "keep_best"),
            min_seconds_between=float(min_seconds_between),
            replicate=rep,
            job_id=job_id or "",
            world_size=_options(world_size, "world_size"),
            rank=_options(rank, "rank"),
            job_starts=_job_starts,
        )
        self.directory = os.fspath(directory)
        self._stop = False
        self._ready_sent = False
        self._previous_handlers: Dict[int, Any] = {}
        self._started = time.monotonic()
        self._train_ms_before = 0

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- signals and systemd --------------------------------------------
    def install_signal_handlers(self, signals: Tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Makes SIGTERM and SIGINT set `stop_requested` instead of ending the
        process, so that the loop saves at a step boundary and exits 0. A
        second signal gets the previous handler (for SIGTERM: the process
        ends at once; the log stays valid).

            ckpt.install_signal_handlers()
            for step in ...:
                train_step()
                if ckpt.stop_requested:
                    ckpt.save(...); break
        """

        def handler(signum: int, frame: Optional[FrameType]) -> None:
            if self._stop:
                previous = self._previous_handlers.get(signum, signal.SIG_DFL)
                signal.signal(signum, previous)
                if callable(previous):
                    previous(signum, frame)
                else:
                    os.kill(os.getpid(), signum)
                return
            self._stop = True

        for s in signals:
            self._previous_handlers[s] = signal.signal(s, handler)

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM/SIGINT arrived (after `install_signal_handlers`)."""
        return self._stop

    def request_stop(self) -> None:
        """Sets `stop_requested`, as a signal would."""
        self._stop = True

    def notify_watchdog(self) -> bool:
        """Sends WATCHDOG=1 to systemd (False without NOTIFY_SOCKET)."""
        return self._writer.notify("WATCHDOG=1")

    def notify(self, message: str) -> bool:
        """Sends any sd_notify message, e.g. `"STATUS=evaluating"`."""
        return self._writer.notify(message)

    def _ready(self, text: str) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            self._writer.notify(f"READY=1\nSTATUS={text}")

    # -- load ------------------------------------------------------------
    def load_latest(
        self,
        model: Optional[torch.nn.Module] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Any = None,
        scaler: Any = None,
        rng: bool = True,
        strict: bool = True,
    ) -> Optional[Restored]:
        """Restores, in place, what the newest intact record (the one
        recovery chose when the log was opened) holds: model, optimizer,
        scheduler, scaler and RNG states. Returns a `Restored`, or None for
        an empty log (with `replicate`, after trying the remote). Names,
        shapes and dtypes must match (`strict`); an error names the first
        tensor that does not. Sends READY=1 to systemd.

            restored = ckpt.load_latest(model=model, optimizer=opt, scheduler=sched)
            start_epoch = restored.epoch if restored else 0
        """
        record = self._recovered()
        if record is None:
            self._ready("no checkpoint, starting fresh")
            return None
        where = f"{record.path}: record {record.seq}"
        if record.kind != "general":
            raise EpochwalError(
                f"{where} was written by `epochwal run` (a trainer record), not by a "
                f"Checkpointer; use a log directory of its own")
        meta = json.loads(record.meta)
        if meta.get("format") != FORMAT:
            raise EpochwalError(f"{where}: the document is not an {FORMAT} document")
        dec = _Decoder(record)
        if model is not None:
            self._load_model(dec, meta, model, strict, where)
        for what, obj, key in (("optimizer", optimizer, "optimizer"),
                               ("scheduler", scheduler, "scheduler"),
                               ("scaler", scaler, "scaler")):
            if obj is None:
                continue
            if meta.get(key) is None:
                if strict:
                    raise EpochwalError(f"{where} holds no {what} state, but a {what} was given "
                                        f"(strict=False loads without it)")
                continue
            state = dec.decode(meta[key], copy=True)
            try:
                obj.load_state_dict(state)
            except Exception as e:  # torch's own checks: name the record
                raise EpochwalError(f"{where}: the {what} does not take the record's state: {e}") from e
        if rng and meta.get("rng") is not None:
            self._load_rng(dec, meta["rng"], where)
        extra_tensors = {n: dec.tensor(f"extra.{n}", copy=True) for n in meta.get("extra_tensors", [])}
        job_id, world_size, rank = record.job
        self._train_ms_before = record.train_time_ms
        self._ready(f"resumed from seq {record.seq} epoch {record.epoch}")
        return Restored(
            seq=record.seq,
            epoch=record.epoch,
            step=record.step,
            step_in_epoch=record.step_in_epoch,
            data_position=dec.decode(meta.get("data_position"), copy=True),
            loss=dec.decode(meta.get("loss"), copy=True),
            val_loss=dec.decode(meta.get("val_loss"), copy=True),
            metrics=dec.decode(meta.get("metrics") or {}, copy=True),
            extra=dec.decode(meta.get("extra") or {}, copy=True),
            extra_tensors=extra_tensors,
            path=str(record.path),
            job_id=job_id or None,
            world_size=world_size or None,
            rank=rank if world_size else None,
        )

    def _recovered(self) -> Optional["_native.RecordView"]:
        """The record `load_latest` loads: the one recovery chose
        (`DistributedCheckpointer` picks the job's common step instead)."""
        return self._writer.recovered()

    def _load_model(self, dec: _Decoder, meta: Dict[str, Any], model: torch.nn.Module,
                    strict: bool, where: str) -> None:
        stored = meta.get("model")
        if stored is None:
            raise EpochwalError(f"{where} holds no model state")
        # Zero-copy views of the mapping; load_state_dict copies them into
        # the parameters, on the model's device.
        theirs = collections.OrderedDict(dec.decode(stored, copy=False))
        versions = meta.get("model_versions")
        if versions:
            theirs._metadata = dec.decode(versions, copy=True)  # type: ignore[attr-defined]
        ours = model.state_dict()
        for name, value in theirs.items():
            if name not in ours:
                if strict:
                    raise EpochwalError(f"{where}: tensor model.{name} is in the record but not "
                                        f"in the model's state_dict")
                continue
            mine = ours[name]
            if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor):
                if tuple(value.shape) != tuple(mine.shape):
                    raise EpochwalError(f"{where}: tensor model.{name} has shape "
                                        f"{list(value.shape)} in the record, {list(mine.shape)} "
                                        f"in the model")
                if value.dtype != mine.dtype:
                    raise EpochwalError(f"{where}: tensor model.{name} has dtype {value.dtype} "
                                        f"in the record, {mine.dtype} in the model")
        if strict:
            for name in ours:
                if name not in theirs:
                    raise EpochwalError(f"{where}: tensor model.{name} of the model is not in "
                                        f"the record")
        try:
            model.load_state_dict(theirs, strict=strict)
        except Exception as e:
            raise EpochwalError(f"{where}: the model does not take the record's state: {e}") from e

    def _load_rng(self, dec: _Decoder, stored: Dict[str, Any], where: str) -> None:
        state = dec.decode(stored, copy=True)
        if state.get("torch") is not None:
            torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            if len(state["cuda"]) != torch.cuda.device_count():
                warnings.warn(f"{where}: the record has the RNG of {len(state['cuda'])} CUDA "
                              f"devices, this machine {torch.cuda.device_count()}: CUDA RNG not restored")
            else:
                torch.cuda.set_rng_state_all(state["cuda"])
        if state.get("python") is not None:
            random.setstate(state["python"])
        if state.get("numpy") is not None:
            np.random.set_state(state["numpy"])

    # -- save ------------------------------------------------------------
    def save(
        self,
        *,
        epoch: int,
        step: int,
        model: Optional[torch.nn.Module] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Any = None,
        scaler: Any = None,
        rng: bool = True,
        data_position: Any = None,
        loss: Optional[float] = None,
        val_loss: Optional[float] = None,
        metrics: Optional[Mapping[str, Any]] = None,
        extra: Optional[Mapping[str, Any]] = None,
        extra_tensors: Optional[Mapping[str, torch.Tensor]] = None,
        step_in_epoch: int = 0,
        force: bool = False,
    ) -> Optional[int]:
        """Appends one record and returns its sequence number once the
        state is copied into the log (the pause); it becomes durable on a
        Rust thread. Returns None when `min_seconds_between` skips it (not
        with `force=True`). Raises the failure of an earlier persist, and
        an EpochwalError naming the tensor or value that cannot be stored.

            seq = ckpt.save(epoch=3, step=1200, model=model, optimizer=opt,
                            loss=0.25, val_loss=0.31, metrics={"acc": 0.9})
        """
        if not force and not self._writer.due():
            return None
        enc = _Encoder()
        doc: Dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "torch_version": torch.__version__,
            "epoch": int(epoch),
            "step": int(step),
            "step_in_epoch": int(step_in_epoch),
            "loss": enc.encode(_number(loss, "loss"), "loss", False),
            "val_loss": enc.encode(_number(val_loss, "val_loss"), "val_loss", False),
            "metrics": enc.encode(dict(metrics or {}), "metrics", False),
            "extra": enc.encode(dict(extra or {}), "extra", False),
            "data_position": enc.encode(data_position, "data_position", False),
            "model": None,
            "optimizer": None,
            "scheduler": None,
            "scaler": None,
            "rng": None,
            "extra_tensors": [],
        }
        if model is not None:
            sd = model.state_dict()
            doc["model"] = enc.encode(dict(sd), "model", False)
            # Module versions (BatchNorm's, ...) that load_state_dict reads.
            doc["model_versions"] = enc.encode(dict(getattr(sd, "_metadata", None) or {}), "model_versions", False)
        if optimizer is not None:
            doc["optimizer"] = enc.encode(optimizer.state_dict(), "optimizer", True)
        if scheduler is not None:
            doc["scheduler"] = enc.encode(scheduler.state_dict(), "scheduler", True)
        if scaler is not None:
            doc["scaler"] = enc.encode(scaler.state_dict(), "scaler", True)
        if rng:
            doc["rng"] = {
                "torch": enc.encode(torch.get_rng_state(), "rng.torch", False),
                "cuda": enc.encode(torch.cuda.get_rng_state_all(), "rng.cuda", False)
                if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
                "python": enc.encode(random.getstate(), "rng.python", False),
                "numpy": enc.encode(np.random.get_state(), "rng.numpy", False),
            }
        for name, t in (extra_tensors or {}).items():
            if not isinstance(name, str):
                raise EpochwalError(f"extra_tensors: the key {name!r} ({type(name).__name__}) "
                                    f"cannot be stored; keys must be strings")
            enc.tensors.append(enc.tensor(f"extra.{name}", t))
            doc["extra_tensors"].append(name)
        self._document(doc)
        self._ready(f"saving epoch {epoch}")
        train_ms = self._train_ms_before + int((time.monotonic() - self._started) * 1000)
        return self._writer.save(
            enc.tensors,
            json.dumps(doc, allow_nan=False),
            epoch=int(epoch),
            step=int(step),
            step_in_epoch=int(step_in_epoch),
            loss=_number(loss, "loss"),
            val_loss=_number(val_loss, "val_loss"),
            train_time_ms=train_ms,
            force=True,
        )

    def _document(self, doc: Dict[str, Any]) -> None:
        """Adds keys to a record's document before it is written
        (`DistributedCheckpointer` adds `distributed`, FORMAT.md §8.2)."""

    def wait(self) -> Optional[int]:
        """Blocks until the last record is durable; returns its sequence
        number (None before any save). Raises if persisting it failed."""
        return self._writer.wait()

    def close(self, upload_timeout: float = 30.0) -> Optional[int]:
        """`wait()`, then (with `replicate`) up to `upload_timeout` seconds
        for the remote to hold the last record, then releases the lock.
        Sends STOPPING=1 when a stop was requested."""
        if self._writer.closed:
            return None
        if self._stop:
            self._writer.notify("STOPPING=1")
        return self._writer.close(upload_timeout)

    @property
    def closed(self) -> bool:
        """Whether `close()` ran."""
        return bool(self._writer.closed)


def _number(value: Any, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise EpochwalError(f"{what} must be a number, not {value!r}") from None


def __getattr__(name: str) -> Any:
    # `DistributedCheckpointer` lives in epochwal.distributed (which imports
    # this module); it is re-exported here, as the API names it.
    if name == "DistributedCheckpointer":
        from .distributed import DistributedCheckpointer

        return DistributedCheckpointer
    raise AttributeError(f"module 'epochwal.torch' has no attribute {name!r}")
