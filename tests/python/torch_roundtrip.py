#!/usr/bin/env python3
"""Round trips through the epochwal package across two processes, for
tests/python_torch_roundtrip.rs.

    torch_roundtrip.py save DIR OUT.json    train a little, save, write digests
    torch_roundtrip.py load DIR OUT.json    fresh objects, load_latest, digests

``save`` writes one log per optimizer under DIR (``sgd``, ``adam``,
``adamw``, ``rmsprop``), each with two param_groups of different
hyperparameters, a scheduler, an enabled CPU GradScaler, the three RNG
states, and a model whose buffers and extra tensors cover every CPU dtype
(float32/16/64, bfloat16, int64/32/16/8, uint8, bool), with values chosen
to hit odd bit patterns (negative zero, NaN payloads, subnormals,
infinities, the extremes of each integer type).

``load`` builds the same objects from other seeds, restores them with
``load_latest`` and writes the same digests; the Rust test compares the two
files key by key. It also checks that the loop continues identically: one
more training step after ``save`` (recorded as ``next.*``) equals one more
step after ``load``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from typing import Any, Callable, Dict

import numpy as np
import torch
from torch import nn

from epochwal import Checkpointer

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


def odd_values(dtype: torch.dtype) -> torch.Tensor:
    """A 3x5 tensor of `dtype` with edge-case bit patterns, built from raw
    bytes for the float types (so NaN payloads survive)."""
    if dtype == torch.bool:
        return torch.tensor([[True, False, True, True, False]] * 3)
    if dtype.is_floating_point:
        width = torch.finfo(dtype).bits // 8
        raw = np.frombuffer(
            hashlib.sha256(str(dtype).encode()).digest() * 4, dtype=np.uint8
        )[: 15 * width].copy()
        t = torch.from_numpy(raw).view(dtype).reshape(3, 5).clone()
        info = torch.finfo(dtype)
        t[0, 0] = -0.0
        t[0, 1] = float("inf")
        t[0, 2] = float("-inf")
        t[0, 3] = info.tiny / 2 if dtype != torch.bfloat16 else info.tiny
        t[0, 4] = info.max
        return t
    info = torch.iinfo(dtype)
    vals = [info.min, info.max, 0, -1 if info.min < 0 else 1, 42] * 3
    return torch.tensor(vals, dtype=dtype).reshape(3, 5)


class AllDtypes(nn.Module):
    """Two linear layers, and one buffer of every CPU dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 2)
        for dt in DTYPES:
            self.register_buffer(f"buf_{str(dt)[6:]}", odd_values(dt))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


OPTIMIZERS: Dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd": lambda m: torch.optim.SGD(
        [
            {"params": m.a.parameters(), "lr": 0.1, "momentum": 0.9, "dampening": 0.1},
            {"params": m.b.parameters(), "lr": 0.02, "momentum": 0.5, "nesterov": True},
        ],
        lr=0.05,
        momentum=0.8,
    ),
    "adam": lambda m: torch.optim.Adam(
        [
            {"params": m.a.parameters(), "lr": 1e-3, "betas": (0.8, 0.95)},
            {"params": m.b.parameters(), "lr": 3e-4, "amsgrad": True},
        ],
        weight_decay=1e-5,
    ),
    "adamw": lambda m: torch.optim.AdamW(
        [
            {"params": m.a.parameters(), "weight_decay": 0.1},
            {"params": m.b.parameters(), "weight_decay": 0.0, "lr": 5e-4},
        ],
        lr=2e-3,
        eps=1e-7,
    ),
    "rmsprop": lambda m: torch.optim.RMSprop(
        [
            {"params": m.a.parameters(), "momentum": 0.9, "centered": True},
            {"params": m.b.parameters(), "alpha": 0.9, "lr": 1e-3},
        ],
        lr=5e-3,
    ),
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().contiguous().cpu()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return sha(f"{t.dtype}{tuple(t.shape)}".encode() + raw)


def canonical(value: Any) -> str:
    """Hash of a JSON-able part of a state dict; tuples count as lists."""
    return sha(json.dumps(value, sort_keys=True, default=repr).encode())


def build(name: str, seed: int) -> Dict[str, Any]:
    torch.manual_seed(seed)
    model = AllDtypes()
    if seed != 1:
        # The loading side starts from other values everywhere.
        with torch.no_grad():
            for b in model.buffers():
                b.zero_()
    opt = OPTIMIZERS[name](model)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    return {"model": model, "opt": opt, "sched": sched, "scaler": scaler}


def train(parts: Dict[str, Any], steps: int) -> None:
    """Steps that use all three RNGs and the scaler."""
    model, opt, sched, scaler = (parts[k] for k in ("model", "opt", "sched", "scaler"))
    for _ in range(steps):
        x = torch.randn(16, 6) * random.uniform(0.5, 2.0)
        x += torch.from_numpy(np.random.standard_normal((16, 6)).astype(np.float32))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()


def digests(parts: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, t in parts["model"].state_dict().items():
        out[f"{prefix}model.{k}"] = tensor_sha(t)
    osd = parts["opt"].state_dict()
    for idx, st in osd["state"].items():
        for key, v in st.items():
            out[f"{prefix}optimizer.state.{idx}.{key}"] = (
                tensor_sha(v) if isinstance(v, torch.Tensor) else canonical(v)
            )
    out[f"{prefix}optimizer.param_groups"] = canonical(osd["param_groups"])
    out[f"{prefix}scheduler"] = canonical(parts["sched"].state_dict())
    out[f"{prefix}scaler"] = canonical(parts["scaler"].state_dict())
    out[f"{prefix}rng.torch"] = tensor_sha(torch.get_rng_state())
    out[f"{prefix}rng.numpy"] = sha(repr(np.random.get_state()).encode())
    out[f"{prefix}rng.python"] = sha(repr(random.getstate()).encode())
    return out


def main() -> int:
    mode, root, out_path = sys.argv[1:4]
    result: Dict[str, str] = {}
    for name in OPTIMIZERS:
        random.seed(1 if mode == "save" else 2)
        np.random.seed(1 if mode == "save" else 2)
        parts = build(name, seed=1 if mode == "save" else 2)
        extra_tensors = {f"x_{str(dt)[6:]}": odd_values(dt).t() for dt in DTYPES}
        with Checkpointer(f"{root}/{name}") as ckpt:
            if mode == "save":
                train(parts, 5)
                here = digests(parts, f"{name}.")
                ckpt.save(
                    epoch=5,
                    step=5,
                    model=parts["model"],
                    optimizer=parts["opt"],
                    scheduler=parts["sched"],
                    scaler=parts["scaler"],
                    rng=True,
                    data_position={"epoch": 5, "offset": 80},
                    loss=0.25,
                    val_loss=0.5,
                    metrics={"acc": 0.75},
                    extra={"name": name, "nested": {"list": [1, 2.5, None, True, "x"]}},
                    extra_tensors=extra_tensors,
                )
                ckpt.wait()
                meta = {"epoch": 5, "step": 5}
            else:
                restored = ckpt.load_latest(
                    model=parts["model"],
                    optimizer=parts["opt"],
                    scheduler=parts["sched"],
                    scaler=parts["scaler"],
                    rng=True,
                )
                assert restored is not None, f"{name}: no record"
                here = digests(parts, f"{name}.")
                assert restored.data_position == {"epoch": 5, "offset": 80}, restored.data_position
                assert restored.loss == 0.25 and restored.val_loss == 0.5, restored
                assert restored.metrics.get("acc") == 0.75, restored.metrics
                assert restored.extra == {
                    "name": name,
                    "nested": {"list": [1, 2.5, None, True, "x"]},
                }, restored.extra
                for k, t in extra_tensors.items():
                    got = restored.extra_tensors[k]
                    assert got.dtype == t.dtype and got.shape == t.shape, (k, got.dtype, got.shape)
                    assert tensor_sha(got) == tensor_sha(t), f"extra tensor {k} differs"
                meta = {"epoch": restored.epoch, "step": restored.step}
        result.update(here)
        result[f"{name}.meta"] = canonical(meta)
        # The loop goes on the same from here in both processes.
        train(parts, 2)
        result.update(digests(parts, f"{name}.next."))
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"{mode}: {len(result)} digests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
