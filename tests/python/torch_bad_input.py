#!/usr/bin/env python3
"""Bad input to the epochwal package, for tests/python_torch_bad_input.rs.

    torch_bad_input.py CASE DIR

Each case first makes a durable baseline record in DIR (a small model with
Adam, one step trained), then does one wrong thing, checks that it fails
with a clear error naming the cause, and that the baseline is still the
record recovery chooses, byte for byte, and still loads into the right
model. It prints ``ok CASE: <the error message>`` and exits 0; anything
else is a failure.

Cases: names, shapes, dtypes, meta, sparse, quantized, noncontiguous,
nonstring_key, unstorable_value, closed, second_process, full_disk
(DIR on a small tmpfs, a FILLER file beside it), readonly_setup and
readonly (DIR remounted read-only in between by the Rust test).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch
from torch import nn

import epochwal
from epochwal import Checkpointer, EpochwalError

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

#: The exceptions a refused input may raise (EpochwalError first).
REFUSED: Tuple[Type[BaseException], ...] = (EpochwalError, TypeError, ValueError)


class Net(nn.Module):
    """The baseline model: fc.weight (2x4 float32), fc.bias, a step buffer."""

    def __init__(self, out: int = 2, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.fc = nn.Linear(4, out, dtype=dtype)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))


class Renamed(nn.Module):
    """Same shapes as Net, other names."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))


def sha(t: torch.Tensor) -> str:
    t = t.detach().contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def state_hashes(model: nn.Module) -> Dict[str, str]:
    return {k: sha(v) for k, v in model.state_dict().items()}


def baseline(d: str) -> Tuple[Net, torch.optim.Optimizer, Dict[str, str], int]:
    """Trains one step and saves it durably; returns model, optimizer,
    hashes and the record's sequence number."""
    torch.manual_seed(3)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.fc(torch.randn(8, 4)).sum().backward()
    opt.step()
    model.seen += 8
    with Checkpointer(d) as ckpt:
        seq = ckpt.save(epoch=1, step=1, model=model, optimizer=opt, loss=0.5)
        assert isinstance(seq, int), seq
        ckpt.wait()
    return model, opt, state_hashes(model), seq


def refused(what: str, fn: Callable[[], Any], *needles: str) -> str:
    """Runs fn, which must raise one of REFUSED with every needle in its
    message (case-insensitive); returns the message."""
    try:
        fn()
    except REFUSED as e:  # noqa: PERF203
        msg = f"{type(e).__name__}: {e}"
        missing = [n for n in needles if n.lower() not in msg.lower()]
        if missing:
            raise AssertionError(f"{what}: the error does not name {missing}: {msg}") from e
        return msg
    raise AssertionError(f"{what}: accepted, expected an error naming {needles}")


def record_bytes(d: str) -> Tuple[int, Dict[str, Tuple[Tuple[int, ...], bytes]]]:
    """The sequence number and the tensors (shape, bytes) of the record
    recovery chooses, through the read-only view (no lock)."""
    rec = epochwal.open_log(d).latest()
    assert rec is not None, f"{d}: the log has no record"
    out = {name: (tuple(arr.shape), arr.tobytes()) for name, arr in rec.tensors.items()}
    return rec.seq, out


def model_hashes(tensors: Dict[str, Tuple[Tuple[int, ...], bytes]]) -> Dict[str, str]:
    return {
        n[len("model.") :]: hashlib.sha256(b).hexdigest()
        for n, (_, b) in tensors.items()
        if n.startswith("model.")
    }


def assert_intact(d: str, hashes: Dict[str, str], seq: int) -> None:
    """The baseline is still the latest record (read-only view), with the
    same bytes, and loads into a fresh Net."""
    got_seq, tensors = record_bytes(d)
    assert got_seq == seq, f"the latest record is {got_seq}, not the baseline {seq}"
    got = model_hashes(tensors)
    assert got == hashes, f"record tensors differ from the baseline: {got} vs {hashes}"
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Checkpointer(d) as ckpt:
        restored = ckpt.load_latest(model=model, optimizer=opt, rng=False)
    assert restored is not None and restored.seq == seq, (restored, seq)
    assert state_hashes(model) == hashes, "the baseline does not load back"


def unchanged(model: nn.Module, before: Dict[str, str], what: str) -> None:
    after = state_hashes(model)
    assert after == before, f"{what}: the model was changed by a failed load: {after} vs {before}"


def case_names(d: str) -> str:
    _, _, hashes, seq = baseline(d)
    other = Renamed()
    before = state_hashes(other)
    with Checkpointer(d) as ckpt:
        msg = refused("renamed model", lambda: ckpt.load_latest(model=other, rng=False), "fc.weight")
    unchanged(other, before, "names")
    assert_intact(d, hashes, seq)
    return msg


def case_shapes(d: str) -> str:
    _, _, hashes, seq = baseline(d)
    other = Net(out=3)
    before = state_hashes(other)
    with Checkpointer(d) as ckpt:
        msg = refused(
            "wider model", lambda: ckpt.load_latest(model=other, rng=False), "fc.weight", "3"
        )
    unchanged(other, before, "shapes")
    assert_intact(d, hashes, seq)
    return msg


def case_dtypes(d: str) -> str:
    _, _, hashes, seq = baseline(d)
    other = Net(dtype=torch.float64)
    before = state_hashes(other)
    with Checkpointer(d) as ckpt:
        msg = refused(
            "float64 model",
            lambda: ckpt.load_latest(model=other, rng=False),
            "fc.weight",
            "float64",
        )
    unchanged(other, before, "dtypes")
    assert_intact(d, hashes, seq)
    return msg


def save_refused(d: str, what: str, needles: Tuple[str, ...], **kw: Any) -> str:
    """A save with kw after the baseline must be refused, leave the
    baseline the latest record, and not poison the next good save."""
    model, opt, hashes, seq = baseline(d)
    with Checkpointer(d) as ckpt:
        msg = refused(what, lambda: ckpt.save(epoch=2, step=2, **kw), *needles)
        ckpt.wait()
    assert_intact(d, hashes, seq)
    with Checkpointer(d) as ckpt:
        nxt = ckpt.save(epoch=3, step=3, model=model, optimizer=opt)
        ckpt.wait()
    assert nxt is not None and nxt > seq, (nxt, seq)
    return msg


def case_meta(d: str) -> str:
    with torch.device("meta"):
        meta_model = Net()
    # The error names the first meta tensor of the state_dict it meets.
    return save_refused(d, "meta model", ("model.", "meta"), model=meta_model)


def case_sparse(d: str) -> str:
    sparse = torch.eye(3).to_sparse()
    return save_refused(
        d, "sparse extra tensor", ("adjacency", "sparse"), extra_tensors={"adjacency": sparse}
    )


def case_quantized(d: str) -> str:
    q = torch.quantize_per_tensor(torch.rand(4), scale=0.1, zero_point=0, dtype=torch.quint8)
    return save_refused(d, "quantized extra tensor", ("qweights", "quantiz"), extra_tensors={"qweights": q})


def case_noncontiguous(d: str) -> str:
    model, opt, _, seq = baseline(d)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {"transposed": base.t(), "strided": base[:, ::2], "expanded": torch.ones(3, 1).expand(3, 5)}
    assert not any(v.is_contiguous() for v in views.values())
    with Checkpointer(d) as ckpt:
        nxt = ckpt.save(epoch=2, step=2, model=model, optimizer=opt, extra_tensors=views)
        ckpt.wait()
    assert nxt is not None and nxt > seq
    _, tensors = record_bytes(d)
    for k, v in views.items():
        shape, raw = tensors[f"extra.{k}"]
        assert shape == tuple(v.shape), (k, shape, v.shape)
        assert raw == v.contiguous().numpy().tobytes(), k
    with Checkpointer(d) as ckpt:
        restored = ckpt.load_latest(model=Net(), rng=False)
    assert restored is not None
    for k, v in views.items():
        got = restored.extra_tensors[k]
        assert torch.equal(got, v) and got.is_contiguous(), k
    return "stored contiguous: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in views.items())


def case_nonstring_key(d: str) -> str:
    msgs = [
        save_refused(d, "int key in extra", ("7",), extra={7: "seven"}),
    ]
    d2 = d + "-nested"
    msgs.append(save_refused(d2, "int key nested in extra", ("outer",), extra={"outer": {(1, 2): 3}}))
    return " | ".join(msgs)


class Opaque:
    """A value JSON cannot hold."""


def case_unstorable_value(d: str) -> str:
    msgs = [save_refused(d, "object in extra", ("callback",), extra={"callback": Opaque()})]
    msgs.append(save_refused(d + "-2", "set in extra", ("ids",), extra={"ids": {1, 2}}))
    msgs.append(save_refused(d + "-3", "object in metrics", ("acc",), metrics={"acc": Opaque()}))
    return " | ".join(msgs)


def case_closed(d: str) -> str:
    model, opt, hashes, seq = baseline(d)
    ckpt = Checkpointer(d)
    ckpt.close()
    msgs = [
        refused("save on a closed log", lambda: ckpt.save(epoch=2, step=2, model=model), "closed"),
        refused("load on a closed log", lambda: ckpt.load_latest(model=Net(), rng=False), "closed"),
    ]
    ckpt.close()  # a second close is harmless
    assert_intact(d, hashes, seq)
    return " | ".join(msgs)


def case_second_process(d: str) -> str:
    model, opt, hashes, seq = baseline(d)
    with Checkpointer(d) as ckpt:
        code = (
            "import sys\n"
            "from epochwal import Checkpointer, EpochwalError\n"
            "try:\n"
            "    Checkpointer(sys.argv[1])\n"
            "except EpochwalError as e:\n"
            "    print(e); sys.exit(3)\n"
            "sys.exit(0)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, d], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 3, f"second process: exit {out.returncode}: {out.stdout}{out.stderr}"
        msg = out.stdout.strip()
        for needle in ("locked", str(os.getpid()), d):
            assert needle in msg, f"second writer's error does not name {needle!r}: {msg}"
        # The first writer goes on.
        nxt = ckpt.save(epoch=2, step=2, model=model, optimizer=opt)
        ckpt.wait()
    assert nxt is not None and nxt > seq
    return msg


def case_full_disk(d: str) -> str:
    """DIR is on a small tmpfs: a state larger than the free space."""
    model, opt, hashes, seq = baseline(d)
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    huge = torch.ones(free // 4 + (1 << 20), dtype=torch.float32)
    ckpt = Checkpointer(d)
    first: Optional[str] = None
    try:
        ckpt.save(epoch=2, step=2, model=model, optimizer=opt, extra_tensors={"huge": huge})
        ckpt.wait()
    except EpochwalError as e:
        first = str(e)
    assert first is not None, "a state larger than the free space was accepted as durable"
    low = first.lower()
    assert "no space" in low or "enospc" in low or "disk" in low, f"does not name the cause: {first}"
    assert d in first or os.path.basename(d) in first, f"does not name the file: {first}"
    try:
        ckpt.close()
    except EpochwalError:
        pass
    del huge
    assert_intact(d, hashes, seq)
    # Space is there again: the log goes on.
    os.remove(os.path.join(os.path.dirname(d), "FILLER"))
    with Checkpointer(d) as ckpt2:
        nxt = ckpt2.save(epoch=3, step=3, model=model, optimizer=opt)
        ckpt2.wait()
    assert nxt is not None and nxt > seq
    return first


def case_readonly_setup(d: str) -> str:
    _, _, hashes, seq = baseline(d)
    with open(d + ".expect", "w", encoding="utf-8") as f:
        f.write(repr((hashes, seq)))
    return f"baseline seq {seq}"


def case_readonly(d: str) -> str:
    with open(d + ".expect", encoding="utf-8") as f:
        hashes, seq = eval(f.read())  # noqa: S307 - our own repr of str/int
    msg = refused("writer on a read-only directory", lambda: Checkpointer(d), "read-only")
    assert d in msg, f"does not name the directory: {msg}"
    got_seq, tensors = record_bytes(d)
    assert got_seq == seq, (got_seq, seq)
    assert model_hashes(tensors) == hashes, "the read-only log reads back other bytes"
    return msg


CASES = {name[len("case_") :]: fn for name, fn in globals().items() if name.startswith("case_")}


def main() -> int:
    case, d = sys.argv[1], sys.argv[2]
    msg = CASES[case](d)
    print(f"ok {case}: {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
