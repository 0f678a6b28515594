#!/usr/bin/env python3
"""Two real PyTorch training loops that checkpoint every step into an
epochwal log and resume from it, for the SIGKILL test
(tests/python_torch_kill.rs).

    torch_loop.py cnn DIR --steps 150 --digest OUT.json
    torch_loop.py mlp DIR --steps 150 --digest OUT.json

- ``cnn``: a small convolutional network (conv, batch norm, pooling, linear)
  on generated 16x16 images of bars, trained with SGD with momentum and
  a StepLR scheduler.
- ``mlp``: an MLP with dropout, trained with AdamW and a OneCycleLR
  scheduler, with a bfloat16 buffer (an exponential average of the loss)
  and an int64 buffer (the number of samples seen).

Both draw every batch from torch's global RNG, flip images or perturb
inputs with Python's ``random`` and add numpy noise, so a resume that
restored any of the three RNGs wrongly ends on different bits. Each run
is deterministic (``torch.use_deterministic_algorithms(True)``, one
thread): the same number of steps gives the same bits whether the process
was killed and restarted or ran through.

The script prints one line per event on stdout, flushed:

    resumed step=S seq=Q     (or ``fresh step=0``) after load_latest
    step N                   after step N was saved (save() returned)
    durable step=N           after wait() confirmed step N durable
    done step=N              after the last step, with the digest written

On completion it writes OUT.json: a SHA-256 per parameter, buffer,
optimizer state tensor, and of the optimizer param_groups, scheduler
state, and the torch, numpy and Python RNG states.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import nn

from epochwal import Checkpointer

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


class SmallCnn(nn.Module):
    """Two conv blocks and a linear head for 1x16x16 images, 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class CountingMlp(nn.Module):
    """An MLP with dropout, a bfloat16 loss average and an int64 counter."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(12, 48), nn.GELU(), nn.Dropout(0.1), nn.Linear(48, 3)
        )
        self.register_buffer("loss_ema", torch.zeros(4, dtype=torch.bfloat16))
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def images(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """n generated 16x16 images: a bright horizontal or vertical bar on
    either half, the class; from a fixed generator, the same every run."""
    g = torch.Generator().manual_seed(1234)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    pos = torch.randint(2, 6, (n,), generator=g)
    for i in range(n):
        c, p = int(labels[i]), int(pos[i])
        p = p if c % 2 == 0 else p + 8
        if c < 2:
            x[i, 0, p, :] += 1.0
        else:
            x[i, 0, :, p] += 1.0
    return x, labels


def regression(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """n rows of 12 features and 3 targets from a fixed random map."""
    g = torch.Generator().manual_seed(99)
    x = torch.randn(n, 12, generator=g)
    w = torch.randn(12, 3, generator=g)
    return x, torch.tanh(x @ w)


def build(kind: str, steps: int) -> Dict[str, Any]:
    """Model, optimizer, scheduler and data of one loop, seeded."""
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    if kind == "cnn":
        model: nn.Module = SmallCnn()
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
        )
        sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.5)
        x, y = images(512)
    else:
        model = CountingMlp()
        decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
            lr=3e-3,
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
        x, y = regression(1024)
    return {"model": model, "opt": opt, "sched": sched, "x": x, "y": y}


def train_step(kind: str, parts: Dict[str, Any]) -> float:
    """One step: a batch from torch's RNG, Python-random augmentation,
    numpy noise; forward, backward, optimizer and scheduler step."""
    model, opt, sched, x, y = (parts[k] for k in ("model", "opt", "sched", "x", "y"))
    model.train()
    idx = torch.randint(0, x.shape[0], (32,))
    xb = x[idx].clone()
    noise = torch.from_numpy(np.random.standard_normal(xb.shape).astype(np.float32))
    xb += 0.01 * noise
    if kind == "cnn":
        if random.random() < 0.5:
            xb = torch.flip(xb, dims=[3])
        loss = nn.functional.cross_entropy(model(xb), y[idx])
    else:
        xb *= random.uniform(0.9, 1.1)
        loss = nn.functional.mse_loss(model(xb), y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if kind == "mlp":
        with torch.no_grad():
            model.loss_ema.mul_(0.9).add_(loss.detach().to(torch.bfloat16) * 0.1)
            model.samples_seen += xb.shape[0]
    return float(loss.detach())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes with its dtype and shape."""
    t = t.detach().contiguous().cpu()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return sha(f"{t.dtype}{tuple(t.shape)}".encode() + raw)


def canonical(value: Any) -> bytes:
    """JSON of a state dict part, tuples as lists (a JSON round trip turns
    ``betas=(0.9, 0.999)`` into a list, which torch treats the same)."""
    return json.dumps(value, sort_keys=True, default=repr).encode()


def digest(parts: Dict[str, Any]) -> Dict[str, str]:
    """Hashes of everything a resume must restore bit for bit."""
    out: Dict[str, str] = {}
    for name, t in parts["model"].state_dict().items():
        out[f"model.{name}"] = tensor_sha(t)
    osd = parts["opt"].state_dict()
    for idx, st in osd["state"].items():
        for key, v in st.items():
            out[f"optimizer.state.{idx}.{key}"] = (
                tensor_sha(v) if isinstance(v, torch.Tensor) else sha(canonical(v))
            )
    out["optimizer.param_groups"] = sha(canonical(osd["param_groups"]))
    out["scheduler"] = sha(canonical(parts["sched"].state_dict()))
    out["rng.torch"] = tensor_sha(torch.get_rng_state())
    out["rng.numpy"] = sha(repr(np.random.get_state()).encode())
    out["rng.python"] = sha(repr(random.getstate()).encode())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["cnn", "mlp"])
    ap.add_argument("dir")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--digest", required=True)
    ap.add_argument("--durable-every", type=int, default=10)
    args = ap.parse_args()

    parts = build(args.kind, args.steps)
    with Checkpointer(args.dir, keep_records=3) as ckpt:
        restored = ckpt.load_latest(
            model=parts["model"], optimizer=parts["opt"], scheduler=parts["sched"], rng=True
        )
        if restored is None:
            step = 0
            print("fresh step=0", flush=True)
        else:
            step = restored.step
            assert restored.data_position == {"batches": step}, restored.data_position
            assert restored.extra.get("kind") == args.kind, restored.extra
            print(f"resumed step={step} seq={restored.seq}", flush=True)
        while step < args.steps:
            loss = train_step(args.kind, parts)
            step += 1
            ckpt.save(
                epoch=step // 20,
                step=step,
                model=parts["model"],
                optimizer=parts["opt"],
                scheduler=parts["sched"],
                rng=True,
                data_position={"batches": step},
                loss=loss,
                metrics={"lr": parts["sched"].get_last_lr()[0]},
                extra={"kind": args.kind},
            )
            print(f"step {step}", flush=True)
            if step % args.durable_every == 0:
                ckpt.wait()
                print(f"durable step={step}", flush=True)
        ckpt.wait()
    with open(args.digest, "w", encoding="utf-8") as f:
        json.dump(digest(parts), f, indent=1, sort_keys=True)
    print(f"done step={step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
