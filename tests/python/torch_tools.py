#!/usr/bin/env python3
"""Logs written by the package's Checkpointer for the operator tools'
tests (tests/python_torch_tools.rs, tests/python_torch_options.rs).

    torch_tools.py write DIR REF N [URL]
        N records (epochs 1..N) of a model with a buffer of every CPU dtype
        and AdamW with two param_groups; loss, val_loss and metrics as
        `expected(epoch)` gives them. With URL (s3://...) every record is
        saved by its own Checkpointer(replicate=...), whose close waits
        for the upload, so every record reaches the remote. Writes
        REF.pt (torch.save of the final model and optimizer state dicts)
        and REF.json (the records' figures and every tensor's dtype name).
    torch_tools.py write-counting DIR
        one record of an SGD whose state also holds an integer per
        parameter (which `export --with-optimizer` must refuse).
    torch_tools.py live DIR
        saves epoch 1, prints "durable 1"; after a line on stdin saves
        epoch 2, prints "durable 2"; closes when stdin ends.
    torch_tools.py load DIR REF [URL]
        a fresh model and optimizer (other seed), load_latest (with
        replicate=URL when given), compared bit for bit with REF.pt;
        prints {"seq": ..., "epoch": ...}.
    torch_tools.py check-export DIR REF SNIPPET
        runs SNIPPET (README's export block) in DIR with `model` and
        `optimizer` fresh; their state dicts must equal REF.pt bit for bit.
    torch_tools.py options CASE DIR
        one Checkpointer option (tests/python_torch_options.rs): prints
        one JSON line with what `save` returned.
    torch_tools.py hold DIR
        opens a Checkpointer on DIR, prints "holding PID", waits for stdin
        to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from epochwal import Checkpointer, EpochwalError

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

DTYPES = [
    torch.float32,
    torch.float16,
    torch.float64,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]

# safetensors' names (FORMAT.md §4.3), as inspect and export print them.
DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class Net(nn.Module):
    """Two linear layers, a batch norm and one buffer of every CPU dtype."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.b = nn.Linear(8, 2)
        g = torch.Generator().manual_seed(seed + 1)
        for dt in DTYPES:
            if dt == torch.bool:
                t = torch.rand(3, 5, generator=g) > 0.5
            elif dt.is_floating_point:
                t = (torch.randn(3, 5, generator=g) * 100).to(dt)
            else:
                info = torch.iinfo(dt)
                t = torch.randint(max(info.min, -1000), min(info.max, 1000), (3, 5),
                                  generator=g, dtype=torch.int64).to(dt)
            self.register_buffer(f"buf_{str(dt)[6:]}", t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.norm(self.a(x))))


def make(seed: int) -> tuple[Net, torch.optim.Optimizer]:
    model = Net(seed)
    opt = torch.optim.AdamW(
        [
            {"params": model.a.parameters(), "weight_decay": 0.1},
            {"params": list(model.norm.parameters()) + list(model.b.parameters()),
             "weight_decay": 0.0, "lr": 5e-4, "betas": (0.8, 0.95)},
        ],
        lr=2e-3,
        eps=1e-7,
    )
    return model, opt


def expected(epoch: int) -> Dict[str, Any]:
    """The figures saved with epoch `epoch` (exact in binary floating point)."""
    val = [0.75, 0.25, 0.5, 0.125, 0.625, 0.375, 0.875, 0.1875][(epoch - 1) % 8]
    return {
        "epoch": epoch,
        "step": epoch * 10,
        "loss": 2.0 - 0.125 * epoch,
        "val_loss": val,
        "metrics": {"acc": 0.5 + 0.0625 * epoch, "tokens": 1000 * epoch},
    }


def train_step(model: Net, opt: torch.optim.Optimizer, epoch: int) -> None:
    g = torch.Generator().manual_seed(100 + epoch)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)
    model.train()
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():  # every buffer changes from record to record
        for dt in DTYPES:
            buf = getattr(model, f"buf_{str(dt)[6:]}")
            if dt == torch.bool:
                buf.logical_not_()
            else:
                buf.add_(1)


def save(ckpt: Checkpointer, model: Net, opt: torch.optim.Optimizer, epoch: int) -> Optional[int]:
    e = expected(epoch)
    return ckpt.save(epoch=epoch, step=e["step"], model=model, optimizer=opt, loss=e["loss"],
                     val_loss=e["val_loss"], metrics=e["metrics"])


def replicate(url: Optional[str]) -> Any:
    return None if url is None else {"url": url, "allow_http": True}


def write(directory: str, ref: str, n: int, url: Optional[str]) -> None:
    model, opt = make(0)
    if url is None:
        with Checkpointer(directory, keep_records=0) as ckpt:
            for epoch in range(1, n + 1):
                train_step(model, opt, epoch)
                save(ckpt, model, opt, epoch)
                ckpt.wait()
    else:
        for epoch in range(1, n + 1):
            with Checkpointer(directory, keep_records=0, replicate=replicate(url)) as ckpt:
                ckpt.load_latest(model=model, optimizer=opt)
                train_step(model, opt, epoch)
                save(ckpt, model, opt, epoch)
            # close() waited for the remote to hold the record.
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, ref + ".pt")
    dtypes = {f"model.{k}": DTYPE_NAMES[v.dtype] for k, v in model.state_dict().items()}
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            dtypes[f"optimizer.state.{i}.{k}"] = DTYPE_NAMES[v.dtype]
    with open(ref + ".json", "w") as f:
        json.dump({"records": [expected(e) for e in range(1, n + 1)], "dtypes": dtypes}, f)


def tensor_key(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return f"{t.dtype}{tuple(t.shape)}:{hashlib.sha256(raw).hexdigest()}"


def differences(ref: Dict[str, Any], model: Net, opt: torch.optim.Optimizer) -> List[str]:
    """What differs between REF.pt's state dicts and the objects', bit for bit."""
    out = []
    theirs, ours = ref["model"], model.state_dict()
    if list(theirs) != list(ours):
        out.append(f"model keys {list(theirs)} != {list(ours)}")
    for k in theirs:
        if k in ours and tensor_key(theirs[k]) != tensor_key(ours[k]):
            out.append(f"model.{k}: {tensor_key(theirs[k])} != {tensor_key(ours[k])}")
    a, b = ref["optimizer"], opt.state_dict()
    if a["param_groups"] != b["param_groups"]:
        out.append(f"param_groups {a['param_groups']} != {b['param_groups']}")
    if sorted(a["state"]) != sorted(b["state"]):
        out.append(f"optimizer state keys {sorted(a['state'])} != {sorted(b['state'])}")
    for i in a["state"]:
        for k, v in a["state"][i].items():
            w = b["state"].get(i, {}).get(k)
            if not isinstance(w, torch.Tensor) or tensor_key(v) != tensor_key(w):
                out.append(f"optimizer.state.{i}.{k}: {tensor_key(v)} != "
                           f"{tensor_key(w) if isinstance(w, torch.Tensor) else w!r}")
        if sorted(a["state"][i]) != sorted(b["state"].get(i, {})):
            out.append(f"optimizer.state.{i} keys differ")
    return out


def load(directory: str, ref: str, url: Optional[str]) -> None:
    model, opt = make(7)
    with Checkpointer(directory, replicate=replicate(url)) as ckpt:
        restored = ckpt.load_latest(model=model, optimizer=opt)
    assert restored is not None, f"{directory}: nothing restored"
    diff = differences(torch.load(ref + ".pt"), model, opt)
    assert not diff, "\n".join(diff)
    print(json.dumps({"seq": restored.seq, "epoch": restored.epoch,
                      "metrics": restored.metrics, "val_loss": restored.val_loss}))


def check_export(directory: str, ref: str, snippet: str) -> None:
    model, optimizer = make(7)
    os.chdir(directory)
    with open(snippet) as f:
        code = f.read()
    exec(compile(code, "README.md export block", "exec"), {"model": model, "optimizer": optimizer})
    diff = differences(torch.load(ref + ".pt"), model, optimizer)
    assert not diff, "\n".join(diff)
    print("export ok")


class CountingSGD(torch.optim.SGD):
    """SGD with momentum that also keeps an integer in each parameter's
    state: a value a safetensors file cannot hold."""

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["calls"] = int(self.state[p].get("calls", 0)) + 1
        return loss


def write_counting(directory: str) -> None:
    model = Net(0)
    opt = CountingSGD(model.parameters(), lr=0.01, momentum=0.9)
    with Checkpointer(directory) as ckpt:
        train_step(model, opt, 1)
        save(ckpt, model, opt, 1)


def live(directory: str) -> None:
    model, opt = make(0)
    with Checkpointer(directory) as ckpt:
        for epoch in (1, 2):
            if epoch == 2:
                sys.stdin.readline()
            train_step(model, opt, epoch)
            save(ckpt, model, opt, epoch)
            ckpt.wait()
            print(f"durable {epoch}", flush=True)
        sys.stdin.read()


def options(case: str, directory: str) -> None:
    model, opt = make(0)
    returned: List[Optional[int]] = []
    if case == "keep_records":
        # The smallest segments (12 KiB): every record (over 8 KiB with the
        # RNG states) gets its own, so retention deletes whole records.
        with Checkpointer(directory, segment_bytes=3 * 4096, keep_records=2) as ckpt:
            for epoch in range(1, 7):
                train_step(model, opt, epoch)
                returned.append(save(ckpt, model, opt, epoch))
                ckpt.wait()
    elif case == "keep_best":
        with Checkpointer(directory, segment_bytes=3 * 4096, keep_records=1, keep_best=2) as ckpt:
            for epoch in range(1, 8):
                train_step(model, opt, epoch)
                returned.append(save(ckpt, model, opt, epoch))
                ckpt.wait()
    elif case == "min_seconds_between":
        with Checkpointer(directory, min_seconds_between=3600) as ckpt:
            for epoch in (1, 2, 3):
                train_step(model, opt, epoch)
                returned.append(save(ckpt, model, opt, epoch))
                ckpt.wait()
            # force=True writes whatever the interval.
            train_step(model, opt, 4)
            e = expected(4)
            returned.append(ckpt.save(epoch=4, step=e["step"], model=model, optimizer=opt,
                                      loss=e["loss"], val_loss=e["val_loss"], force=True))
            ckpt.wait()
    else:
        raise SystemExit(f"unknown case {case}")
    print(json.dumps({"returned": returned}))


def hold(directory: str) -> None:
    with Checkpointer(directory):
        print(f"holding {os.getpid()}", flush=True)
        sys.stdin.read()


def second(directory: str) -> None:
    try:
        Checkpointer(directory)
    except EpochwalError as e:
        print(json.dumps({"refused": str(e)}))
        return
    print(json.dumps({"refused": None}))


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "write":
        write(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else None)
    elif cmd == "load":
        load(args[0], args[1], args[2] if len(args) > 2 else None)
    elif cmd == "check-export":
        check_export(args[0], args[1], args[2])
    elif cmd == "write-counting":
        write_counting(args[0])
    elif cmd == "live":
        live(args[0])
    elif cmd == "options":
        options(args[0], args[1])
    elif cmd == "hold":
        hold(args[0])
    elif cmd == "second":
        second(args[0])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
