#!/usr/bin/env python3
"""A small DDP training job (gloo, CPU) of which every rank checkpoints
every step into its own log of a job directory and replicates it to the
job URL, for the two-hosts test (tests/replicate_ranks.rs). Started by
torchrun:

    python3 -m torch.distributed.run --standalone --nproc-per-node 2 \\
        ranks_s3.py JOBDIR --steps 40 [--url s3://ckpt/job] --digest OUT

- Every rank checkpoints with ``epochwal.DistributedCheckpointer(JOBDIR)``
  (rank r's log is ``JOBDIR/rank-<r, 5 digits>``); with ``--url`` it is
  given ``replicate=URL``: the rank replicates to ``URL/rank-<r>``,
  advances ``URL/SET``, and ``load_latest`` first restores an empty
  directory from the record ``URL/SET`` names for this rank.
- ``--local-only-rank R`` gives rank R no replication (as if its uploads
  had not happened); ``--unsaved-rank R`` makes rank R train without
  saving and close only after the other ranks closed (its uploads lag).
- Every batch is a function of (step, rank) alone and the model is
  restored with its Adam state and RNG, so a job resumed at step S ends
  on the same bits as one that ran through.

Prints, flushed: ``resumed rank=R step=S`` (or ``fresh rank=R``), then
``saved rank=R step=N`` after each save, and ``done rank=R`` at the end,
after which rank R's digest (SHA-256 of every parameter and optimizer
tensor, and of the step) is in ``OUT.<R>``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from epochwal import DistributedCheckpointer

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def batch(step: int, rank: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """The batch of `rank` at `step`: a function of both alone."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(32, 16, generator=g)
    y = (x[:, :4].sum(dim=1, keepdim=True) > 0).float().expand(32, 4)
    return x, y


def digest(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> str:
    """SHA-256 of every parameter, every optimizer tensor and the step."""
    h = hashlib.sha256(str(step).encode())
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    for idx, st in sorted(opt.state_dict()["state"].items()):
        for k, v in sorted(st.items()):
            h.update(f"{idx}.{k}".encode())
            h.update(v.detach().contiguous().numpy().tobytes() if torch.is_tensor(v) else repr(v).encode())
    return h.hexdigest()


def main() -> int:
    """Trains to --steps, checkpointing (and replicating) every step."""
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--url", default=None)
    ap.add_argument("--digest", required=True)
    ap.add_argument("--keep-records", type=int, default=3)
    ap.add_argument("--step-seconds", type=float, default=0.0,
                    help="sleep after each step (the time a real step computes)")
    ap.add_argument("--local-only-rank", type=int, action="append", default=[],
                    help="this rank does not replicate (as if its uploads had not happened)")
    ap.add_argument("--unsaved-rank", type=int, action="append", default=[],
                    help="this rank trains but does not save; it closes only after every "
                         "other rank closed (its uploads lag behind theirs)")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    replicate: Optional[dict] = None
    if args.url and rank not in args.local_only_rank:
        replicate = {"url": args.url, "keep_records": args.keep_records}
    ckpt = DistributedCheckpointer(
        args.job,
        keep_records=args.keep_records,
        replicate=replicate,
        job_id="two-hosts",
    )
    restored = ckpt.load_latest(model=model, optimizer=opt)
    start = restored.step if restored else 0
    print(f"resumed rank={rank} step={start}" if restored else f"fresh rank={rank}", flush=True)
    # Every rank must resume at the same step, or DDP trains a model no
    # one saved.
    starts = [None] * world
    dist.all_gather_object(starts, start)
    if len(set(starts)) != 1:
        print(f"rank {rank}: ranks resumed at different steps {starts}", file=sys.stderr, flush=True)
        return 3
    for step in range(start + 1, args.steps + 1):
        x, y = batch(step, rank)
        opt.zero_grad()
        loss = nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
        if rank not in args.unsaved_rank:
            ckpt.save(epoch=step // 10, step=step, model=model, optimizer=opt, loss=float(loss))
            print(f"saved rank={rank} step={step}", flush=True)
        time.sleep(args.step_seconds)
    if rank in args.unsaved_rank:
        dist.barrier()  # the others have closed: their uploads are remote
    ckpt.wait()
    ckpt.close(upload_timeout=120.0)
    if rank not in args.unsaved_rank and args.unsaved_rank:
        dist.barrier()
    with open(f"{args.digest}.{rank}", "w") as f:
        f.write(digest(model, opt, args.steps))
    print(f"done rank={rank}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
