"""One rank of a small torch.distributed job (started by torchrun, gloo, CPU)
that checkpoints every step with `epochwal.DistributedCheckpointer`.

    python3 -m torch.distributed.run --standalone --nproc-per-node 2 \\
        torch_ranks.py JOB_DIR --mode ddp --steps 40 --digest OUT

`--mode ddp`: a DistributedDataParallel MLP (with dropout, so that the RNG
matters) and AdamW; `--mode zero`: the same model with a
ZeroRedundancyOptimizer over Adam (each rank saves its own shard). Every
rank's batch of step s comes from its own RNG stream, which is restored.

Prints `resumed STEP` (or `fresh`), `saving STEP` just before each save
and `saved STEP` after it returns (so that the last line of a SIGKILLed
rank tells whether it died inside a save or between two),
and at the end writes `OUT.rank<r>`: one line per tensor of the model, the
optimizer state this rank holds and the RNG, with its SHA-256, so that two
runs can be compared bit for bit. `--kill-self-at STEP` makes this rank
SIGKILL itself at a random moment inside the save of STEP (a thread fires
after a delay drawn within the measured duration of the previous save).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP

import epochwal


def digest_lines(model: torch.nn.Module, opt_state: Dict[str, Any]) -> List[str]:
    lines = []
    for name, t in model.state_dict().items():
        lines.append(f"model.{name} {hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()}")
    for idx, st in sorted(opt_state["state"].items()):
        for key, t in sorted(st.items()):
            data = t.detach().contiguous().numpy().tobytes() if isinstance(t, torch.Tensor) else repr(t).encode()
            lines.append(f"optimizer.{idx}.{key} {hashlib.sha256(data).hexdigest()}")
    lines.append(f"param_groups {hashlib.sha256(repr([{k: v for k, v in g.items() if k != 'params'} for g in opt_state['param_groups']]).encode()).hexdigest()}")
    lines.append(f"rng.torch {hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()}")
    lines.append(f"rng.python {hashlib.sha256(repr(random.getstate()).encode()).hexdigest()}")
    return lines


def say(text: str) -> None:
    """One line in one write(2): the ranks share the pipe, and a pipe write
    of at most PIPE_BUF bytes is never interleaved with another."""
    os.write(1, (text + "\n").encode())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--mode", choices=["ddp", "zero"], default="ddp")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--digest", required=True)
    ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--kill-self-at", type=int, default=-1)
    ap.add_argument("--kill-rank", type=int, default=1)
    ap.add_argument("--step-sleep", type=float, default=0.0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(1234)  # the same initial weights on every rank
    random.seed(99 + rank)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    # One parameter per gradient bucket, in every step: DDP reduces a
    # process's first step in one bucket of all parameters (unless
    # find_unused_parameters) and later steps in rebuilt buckets, so a
    # restarted job's first step would reduce another layout than the
    # uninterrupted run's at that step, and with more than 2 ranks the
    # ring's float sums differ in order (DDP's own state: in no state_dict).
    ddp = DDP(model, bucket_cap_mb=1e-6, find_unused_parameters=True)
    if args.mode == "zero":
        opt: Any = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.Adam, lr=1e-2)
    else:
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.01)
    torch.manual_seed(5000 + rank)  # each rank's own data and dropout stream

    ckpt = epochwal.DistributedCheckpointer(args.job, keep_records=args.keep)
    restored = ckpt.load_latest(model=ddp, optimizer=opt)
    start = restored.step if restored else 0
    say(f"rank {rank} resumed {start}" if restored else f"rank {rank} fresh")
    target_w = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    last_save = 0.002
    kill_at = args.kill_self_at
    for step in range(start, args.steps):
        x = torch.randn(8, 16)
        y = x @ target_w + 0.1 * torch.randn(8, 4)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        timer: Optional[threading.Timer] = None
        if step + 1 == kill_at and rank == args.kill_rank:
            delay = random.Random(time.time_ns()).uniform(0, last_save)
            timer = threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL))
            timer.start()
            say(f"rank {rank} killing itself {delay * 1e3:.3f} ms into the save of {step + 1}")
        say(f"rank {rank} saving {step + 1}")
        t0 = time.perf_counter()
        ckpt.save(epoch=0, step=step + 1, model=ddp, optimizer=opt, loss=loss.item())
        if args.kill_self_at > 0:
            ckpt.wait()  # the measured save includes its persist
        last_save = time.perf_counter() - t0
        if timer is not None:
            # This save (and its persist) ended before the timer: the kill
            # missed it. Try again in the next save.
            timer.cancel()
            say(f"rank {rank} kill missed the save of {step + 1}")
            kill_at += 1
        say(f"rank {rank} saved {step + 1}")
    ckpt.close()
    state = opt.optim.state_dict() if args.mode == "zero" else opt.state_dict()
    with open(f"{args.digest}.rank{rank}", "w") as f:
        f.write("\n".join(digest_lines(model, state)) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
