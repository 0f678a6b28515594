#!/usr/bin/env python3
"""epochwal's per-rank logs beside torch.distributed.checkpoint (DCP) for a
multi-rank job, with 2 and 4 ranks on the same state, in one run:

    python3 benches/torch_ranks.py                       # 2 and 4 ranks, 64MiB per rank
    python3 benches/torch_ranks.py --ranks 2,4 --mib 256 --runs 5 --dir /mnt/nvme/bench

The script starts one job per rank count with torchrun (gloo, CPU, one
torch thread per rank); every rank holds its own shard of the state (an
MLP and its Adam moments of ``--mib`` MiB, its keys prefixed with the
rank, as a ZeRO shard is: DCP then writes every rank's tensors, none
deduplicated as replicated). Sides, each figure the slowest rank's (the
job's), a median over runs after one warm-up run:

- ``epochwal``: each rank's ``Checkpointer`` on ``J/rank-<r>`` (world_size,
  rank set): ``save`` (the pause), ``wait`` (durable), then a new
  ``Checkpointer`` on the directory and ``load_latest`` with model and
  optimizer (restore; printed also apart: ``open``, the writer's recovery
  and preparation of its next append, and ``load_latest``). No collective.
- ``dcp.save``: ``torch.distributed.checkpoint.save`` (collective; its
  file writer fsyncs every file): pause = durable.
- ``dcp.async_save``: returns after staging (the pause); durable when its
  future ends.
- ``dcp.load``: in place into the state dict, then both
  ``load_state_dict`` calls (restore).

Ratios are computed per run from sides measured back to back, then the
median is printed, with one ``# goal`` line per goal of issue 22 (durable
>= 1.5x faster than dcp.save and async_save, pause >= 10x less than
async_save's, restore >= 3x faster than dcp.load). Loads read files the
page cache holds, for every side alike. A benchmark prints numbers; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

MiB = 1 << 20
WIDTH = 1024


def worker(args: argparse.Namespace) -> int:
    """One rank: every side, run after run; rank 0 prints one JSON line per
    run with the slowest rank's figures."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch import nn

    from epochwal import Checkpointer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def build(seed: int) -> "tuple[nn.Module, torch.optim.Optimizer]":
        torch.manual_seed(seed + rank)
        layers = max(1, (args.mib * MiB) // (12 * WIDTH * WIDTH))
        model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)])
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        opt.zero_grad(set_to_none=True)
        return model, opt

    model, opt = build(0)
    model2, opt2 = build(100)

    def flat(m: nn.Module, o: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
        out = {f"rank{rank}.model.{k}": v for k, v in m.state_dict().items()}
        for idx, st in o.state_dict()["state"].items():
            for key, v in st.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    out[f"rank{rank}.optimizer.{idx}.{key}"] = v
        return out

    def unflat(m: nn.Module, o: torch.optim.Optimizer, f: Dict[str, torch.Tensor]) -> None:
        pre = f"rank{rank}.model."
        m.load_state_dict({k[len(pre):]: v for k, v in f.items() if k.startswith(pre)})
        osd = o.state_dict()
        for idx, st in osd["state"].items():
            for key in list(st):
                name = f"rank{rank}.optimizer.{idx}.{key}"
                if name in f:
                    st[key] = f[name]
        o.load_state_dict(osd)

    nbytes = sum(t.numel() * t.element_size() for t in flat(model, opt).values())
    job = os.path.join(args.dir, "J")
    log = os.path.join(job, f"rank-{rank:05d}")
    opts = dict(keep_records=2, world_size=world, rank=rank, job_id="bench")
    ckpt = Checkpointer(log, **opts)
    step = 0

    def slowest(x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def now() -> float:
        return time.perf_counter()

    for run in range(args.runs + 1):
        got: Dict[str, float] = {}
        # epochwal: no collective; the barrier only lines the ranks up.
        step += 1
        dist.barrier()
        t0 = now()
        ckpt.save(epoch=step, step=step, model=model, optimizer=opt, rng=False)
        t1 = now()
        ckpt.wait()
        t2 = now()
        ckpt.close()
        t3 = now()
        ckpt = Checkpointer(log, **opts)
        t3a = now()
        r = ckpt.load_latest(model=model2, optimizer=opt2, rng=False)
        t4 = now()
        assert r is not None and r.step == step, (r, step)
        got["epochwal pause"] = slowest(t1 - t0)
        got["epochwal durable"] = slowest(t2 - t0)
        got["epochwal restore"] = slowest(t4 - t3)
        got["epochwal restore: open"] = slowest(t3a - t3)
        got["epochwal restore: load_latest"] = slowest(t4 - t3a)
        # One untimed save on the new handle, as a loop has saved before.
        step += 1
        ckpt.save(epoch=step, step=step, model=model, optimizer=opt, rng=False)
        ckpt.wait()

        path = os.path.join(args.dir, f"dcp-{run}")
        dist.barrier()
        t0 = now()
        dcp.save(flat(model, opt), checkpoint_id=path)
        t1 = now()
        got["dcp.save durable"] = slowest(t1 - t0)
        dist.barrier()
        t0 = now()
        target = flat(model2, opt2)
        dcp.load(target, checkpoint_id=path)
        unflat(model2, opt2, target)
        t1 = now()
        got["dcp.load restore"] = slowest(t1 - t0)

        apath = os.path.join(args.dir, f"dcp-async-{run}")
        dist.barrier()
        t0 = now()
        fut = dcp.async_save(flat(model, opt), checkpoint_id=apath)
        t1 = now()
        fut.result()
        t2 = now()
        got["dcp.async_save pause"] = slowest(t1 - t0)
        got["dcp.async_save durable"] = slowest(t2 - t0)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(apath, ignore_errors=True)
            if run > 0:
                print("RUN " + json.dumps({"world": world, "bytes_per_rank": nbytes, **got}), flush=True)
        dist.barrier()
    ckpt.close()
    dist.destroy_process_group()
    return 0


GOALS = [
    # (name, numerator, denominator, goal)
    ("durable: dcp.save / epochwal", "dcp.save durable", "epochwal durable", 1.5),
    ("durable: dcp.async_save / epochwal", "dcp.async_save durable", "epochwal durable", 1.5),
    ("pause: dcp.async_save / epochwal", "dcp.async_save pause", "epochwal pause", 10.0),
    ("pause: dcp.save / epochwal", "dcp.save durable", "epochwal pause", 10.0),
    ("restore: dcp.load / epochwal", "dcp.load restore", "epochwal restore", 3.0),
]


def main() -> int:
    """Parses the options; as a worker runs one rank, else starts the jobs
    and prints the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="2,4", help="rank counts, comma-separated (default 2,4)")
    ap.add_argument("--mib", type=int, default=64, help="state per rank in MiB (default 64)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per job (default 3, plus a warm-up)")
    ap.add_argument("--dir", default=None, help="where the jobs write (default: a temporary directory)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    root = tempfile.mkdtemp(prefix="epochwal-ranks-bench-", dir=args.dir)
    print(f"# torch_ranks: {args.mib} MiB per rank, runs {args.runs} + 1 warm-up, in {root} "
          f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores)", flush=True)
    ok = True
    try:
        for world in [int(x) for x in args.ranks.split(",")]:
            d = os.path.join(root, f"world-{world}")
            os.makedirs(d)
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                   os.path.abspath(__file__), "--worker", "--mib", str(args.mib), "--runs", str(args.runs),
                   "--dir", d]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"# {world} ranks: the job failed ({out.returncode}):\n{out.stderr[-4000:]}", flush=True)
                ok = False
                continue
            runs = [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("RUN ")]
            per_rank = runs[0]["bytes_per_rank"]
            print(f"## {world} ranks, {per_rank / MiB:.0f} MiB per rank ({world * per_rank / MiB:.0f} MiB in all)",
                  flush=True)
            for key in [k for k in runs[0] if k not in ("world", "bytes_per_rank")]:
                v = [r[key] for r in runs]
                print(f"{world} ranks {key:<24} {statistics.median(v) * 1e3:9.1f} ms "
                      f"({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f})", flush=True)
            for name, num, den, goal in GOALS:
                v = [r[num] / r[den] for r in runs]
                m = statistics.median(v)
                print(f"{world} ranks ratio {name:<36} {m:8.2f}  (min {min(v):.2f}, max {max(v):.2f})", flush=True)
                print(f"# goal {world} ranks {name} >= {goal:g}x: {'MET' if m >= goal else 'MISSED'} ({m:.2f}x)",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
