#!/usr/bin/env python3
"""epochwal's Python package beside PyTorch's own checkpointing, on the same
training state (an MLP and its Adam moments), in one run:

    python3 benches/torch_checkpoint.py                    # 16MiB,256MiB,1GiB
    python3 benches/torch_checkpoint.py --sizes 16MiB,256MiB --runs 5
    python3 benches/torch_checkpoint.py --dir /mnt/nvme/bench --only loop

Sides, each durable on disk when its "durable" figure ends:
- ``epochwal``: ``Checkpointer.save`` (the pause), ``wait`` (durable),
  ``load_latest`` with model and optimizer (load, includes
  ``load_state_dict``).
- ``torch.save``: ``torch.save`` then ``fsync`` of the file and its
  directory; load is ``torch.load(weights_only=True)`` plus both
  ``load_state_dict`` calls.
- ``safetensors``: ``safetensors.torch.save_file`` then ``fsync``; load is
  ``load_file`` plus both ``load_state_dict`` calls.
- ``dcp.save`` / ``dcp.async_save``: ``torch.distributed.checkpoint`` in a
  single process (``no_dist=True``), whose file writer fsyncs each file;
  ``async_save`` returns after staging (the pause) and its future ends when
  durable; load is ``dcp.load`` in place plus both ``load_state_dict`` calls.
- ``memcpy``: ``copy_`` of every tensor into a preallocated copy, the bound
  of any pause that copies the state.

Every figure is a median over runs (one warm-up run first), each ratio is
computed per run from sides measured back to back. epochwal's load always
reads from the disk: a writer's recovery fsyncs the segment and drops its
cached pages before reading it (FORMAT.md §1), so that bytes only the page
cache holds are never taken for durable. The peers' loads are measured
twice: ``load`` from the page cache (warm, as a restart on the same machine
finds a file), and ``cold_load`` after the file's cached pages are dropped,
which is what epochwal's load always does. The ``loop`` section times a
training loop on the 16 MiB state that checkpoints every epoch against the
same loop without checkpoints, with the epoch at least 5x the persist time.

Prints one line per figure and a ``# goal`` line per goal of issue 20.
Needs torch, safetensors and the installed epochwal package.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

import epochwal
from epochwal import Checkpointer

MiB = 1 << 20
WIDTH = 2048


def parse_size(s: str) -> int:
    s = s.strip()
    for unit, mult in (("GiB", 1 << 30), ("MiB", MiB)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def human(n: int) -> str:
    return f"{n / (1 << 30):g}GiB" if n >= 1 << 30 else f"{n / MiB:g}MiB"


def build(state_bytes: int, seed: int = 0) -> Tuple[nn.Module, torch.optim.Optimizer]:
    """An MLP of WIDTH-wide layers whose parameters and two Adam moments
    hold about state_bytes, after one Adam step."""
    torch.manual_seed(seed)
    floats = state_bytes // 12
    full, rest = divmod(floats, WIDTH * WIDTH)
    layers: List[nn.Module] = [nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(full)]
    if rest >= WIDTH:
        layers.append(nn.Linear(WIDTH, rest // WIDTH, bias=False))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def state_tensors(model: nn.Module, opt: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    """The state as flat named tensors (for safetensors, dcp and memcpy)."""
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                out[f"optimizer.state.{idx}.{key}"] = v
    return out


def restore_flat(model: nn.Module, opt: torch.optim.Optimizer, flat: Dict[str, torch.Tensor]) -> None:
    """load_state_dict from flat named tensors."""
    model.load_state_dict({k[6:]: v for k, v in flat.items() if k.startswith("model.")})
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for key in list(st):
            name = f"optimizer.state.{idx}.{key}"
            if name in flat:
                st[key] = flat[name]
    opt.load_state_dict(osd)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def forget(path: str) -> None:
    """Drops the clean cached pages of the file or tree at `path`, so that
    the next read comes from the disk, as epochwal's own restart always
    does (its recovery fsyncs a segment and drops its cached pages before
    reading it; FORMAT.md §1)."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_and_cold(path: str, load: Callable[[], None]) -> Tuple[float, float]:
    """Times `load` twice: from the page cache, then after `forget(path)`."""
    t0 = now()
    load()
    warm = now() - t0
    forget(path)
    t0 = now()
    load()
    return warm, now() - t0


def fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fsync_path(os.path.join(root, f))
        fsync_path(root)


def now() -> float:
    return time.perf_counter()


class Bench:
    """One state size: every side, run after run."""

    def __init__(self, size: int, root: str) -> None:
        self.size = size
        self.root = root
        self.model, self.opt = build(size)
        self.model2, self.opt2 = build(size, seed=1)
        self.flat = state_tensors(self.model, self.opt)
        self.nbytes = sum(t.numel() * t.element_size() for t in self.flat.values())
        self.copies = {k: torch.empty_like(v) for k, v in self.flat.items()}
        self.ckpt_dir = os.path.join(root, "epochwal")
        self.ckpt = Checkpointer(self.ckpt_dir, keep_records=2)
        self.epoch = 0

    def close(self) -> None:
        self.ckpt.close()

    def memcpy(self) -> Dict[str, float]:
        t0 = now()
        for k, v in self.flat.items():
            self.copies[k].copy_(v)
        return {"pause": now() - t0}

    def epochwal(self) -> Dict[str, float]:
        self.epoch += 1
        t0 = now()
        self.ckpt.save(epoch=self.epoch, step=self.epoch, model=self.model, optimizer=self.opt, rng=False)
        t1 = now()
        self.ckpt.wait()
        t2 = now()
        # Load as a restarted loop does: open the directory (recovery
        # validates the newest record), then load_latest into the model
        # and optimizer. One writer per directory: this one closes first.
        self.ckpt.close()
        t3 = now()
        self.ckpt = Checkpointer(self.ckpt_dir, keep_records=2)
        t4 = now()
        r = self.ckpt.load_latest(model=self.model2, optimizer=self.opt2, rng=False)
        t5 = now()
        assert r is not None and r.epoch == self.epoch, (r, self.epoch)
        # A loop saves on a handle that has saved before: one untimed save
        # on the new handle, so that the next run's pause is not its first.
        self.epoch += 1
        self.ckpt.save(epoch=self.epoch, step=self.epoch, model=self.model, optimizer=self.opt, rng=False)
        self.ckpt.wait()
        return {"pause": t1 - t0, "durable": t2 - t0, "load": t5 - t3, "open": t4 - t3}

    def torch_save(self) -> Dict[str, float]:
        path = os.path.join(self.root, "torch.pt")
        t0 = now()
        torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}, path)
        t1 = now()
        fsync_path(path)
        fsync_path(self.root)
        t2 = now()

        def load() -> None:
            sd = torch.load(path, weights_only=True)
            self.model2.load_state_dict(sd["model"])
            self.opt2.load_state_dict(sd["optimizer"])

        warm, cold = warm_and_cold(path, load)
        os.remove(path)
        return {"pause": t1 - t0, "durable": t2 - t0, "load": warm, "cold_load": cold}

    def safetensors(self) -> Dict[str, float]:
        from safetensors.torch import load_file, save_file

        path = os.path.join(self.root, "state.safetensors")
        t0 = now()
        save_file(self.flat, path)
        t1 = now()
        fsync_path(path)
        fsync_path(self.root)
        t2 = now()
        warm, cold = warm_and_cold(path, lambda: restore_flat(self.model2, self.opt2, load_file(path)))
        os.remove(path)
        return {"pause": t1 - t0, "durable": t2 - t0, "load": warm, "cold_load": cold}

    def _dcp_load(self, path: str) -> float:
        import torch.distributed.checkpoint as dcp

        t0 = now()
        target = state_tensors(self.model2, self.opt2)
        dcp.load(target, checkpoint_id=path, no_dist=True)
        restore_flat(self.model2, self.opt2, target)
        return now() - t0

    def dcp_save(self) -> Dict[str, float]:
        import torch.distributed.checkpoint as dcp

        path = os.path.join(self.root, "dcp")
        t0 = now()
        dcp.save(self.flat, checkpoint_id=path, no_dist=True)
        t1 = now()
        fsync_path(self.root)
        t2 = now()
        load = self._dcp_load(path)
        forget(path)
        cold = self._dcp_load(path)
        shutil.rmtree(path)
        return {"pause": t1 - t0, "durable": t2 - t0, "load": load, "cold_load": cold}

    def dcp_async(self) -> Dict[str, float]:
        import torch.distributed.checkpoint as dcp

        path = os.path.join(self.root, "dcp-async")
        t0 = now()
        fut = dcp.async_save(self.flat, checkpoint_id=path, no_dist=True)
        t1 = now()
        if hasattr(fut, "upload_completion"):
            fut.upload_completion.result()
        else:
            fut.result()
        fsync_path(self.root)
        t2 = now()
        shutil.rmtree(path)
        return {"pause": t1 - t0, "durable": t2 - t0}


SIDES = ["memcpy", "epochwal", "torch_save", "safetensors", "dcp_save", "dcp_async"]


def med(xs: List[float]) -> float:
    return statistics.median(xs)


def run_size(size: int, runs: int, root: str) -> Dict[str, Dict[str, float]]:
    d = tempfile.mkdtemp(prefix=f"size-{human(size)}-", dir=root)
    b = Bench(size, d)
    print(f"## state {human(size)}: {b.nbytes} bytes in {len(b.flat)} tensors, runs {runs} + 1 warm-up "
          f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
    per: Dict[str, Dict[str, List[float]]] = {s: {} for s in SIDES}
    ratios: Dict[str, List[float]] = {}
    try:
        for run in range(runs + 1):
            got: Dict[str, Dict[str, float]] = {}
            for side in SIDES:
                gc.collect()
                got[side] = getattr(b, side)()
            if run == 0:
                continue
            for side, figs in got.items():
                for k, v in figs.items():
                    per[side].setdefault(k, []).append(v)
            ew = got["epochwal"]
            for name, num, den in [
                ("pause/memcpy", ew["pause"], got["memcpy"]["pause"]),
                ("torch.save pause/pause", got["torch_save"]["pause"], ew["pause"]),
                ("torch.save durable/durable", got["torch_save"]["durable"], ew["durable"]),
                ("safetensors durable/durable", got["safetensors"]["durable"], ew["durable"]),
                ("dcp.save durable/durable", got["dcp_save"]["durable"], ew["durable"]),
                ("dcp.async_save pause/pause", got["dcp_async"]["pause"], ew["pause"]),
                ("dcp.async_save durable/durable", got["dcp_async"]["durable"], ew["durable"]),
                ("torch.load/load_latest", got["torch_save"]["load"], ew["load"]),
                ("dcp.load/load_latest", got["dcp_save"]["load"], ew["load"]),
                ("safetensors load/load_latest", got["safetensors"]["load"], ew["load"]),
                ("cold torch.load/load_latest", got["torch_save"]["cold_load"], ew["load"]),
                ("cold dcp.load/load_latest", got["dcp_save"]["cold_load"], ew["load"]),
                ("cold safetensors/load_latest", got["safetensors"]["cold_load"], ew["load"]),
            ]:
                ratios.setdefault(name, []).append(num / den)
    finally:
        b.close()
        del b
        gc.collect()
        shutil.rmtree(d, ignore_errors=True)
    tag = human(size)
    for side in SIDES:
        figs = "  ".join(
            f"{k}={med(v) * 1e3:9.1f} ms ({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f})" for k, v in per[side].items()
        )
        print(f"{tag:>7} {side:<12} {figs}", flush=True)
    for name, v in ratios.items():
        print(f"{tag:>7} ratio {name:<32} {med(v):8.2f}  (min {min(v):.2f}, max {max(v):.2f})", flush=True)
    return {name: {"median": med(v), "min": min(v), "max": max(v)} for name, v in ratios.items()}


def run_loop(root: str, runs: int) -> float:
    """Training epochs on the 16 MiB state, with and without a checkpoint
    per epoch; the epoch is sized to at least 5x the persist time."""
    d = tempfile.mkdtemp(prefix="loop-", dir=root)
    torch.manual_seed(0)
    model, opt = build(16 * MiB)
    out = model[-1].out_features
    x = torch.randn(64, WIDTH)
    y = torch.randn(64, out)

    def step() -> None:
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with Checkpointer(os.path.join(d, "log"), keep_records=2) as ckpt:
        for _ in range(3):
            step()
        t0 = now()
        for _ in range(5):
            step()
        step_s = (now() - t0) / 5
        persists = []
        for i in range(5):
            t0 = now()
            ckpt.save(epoch=i, step=i, model=model, optimizer=opt, rng=False)
            ckpt.wait()
            persists.append(now() - t0)
        persist_s = med(persists)
        steps = max(10, int(5 * persist_s / step_s) + 1)
        print(f"## loop: step {step_s * 1e3:.1f} ms, persist {persist_s * 1e3:.1f} ms, epoch = {steps} steps "
              f"({steps * step_s / persist_s:.1f}x the persist)", flush=True)

        def epoch(save: bool, n: int) -> float:
            t0 = now()
            for _ in range(steps):
                step()
            if save:
                ckpt.save(epoch=n, step=n * steps, model=model, optimizer=opt, rng=False)
            return now() - t0

        ratios = []
        n = 0
        for run in range(runs + 1):
            # 4 epochs each way, interleaved in pairs.
            with_ckpt, without = 0.0, 0.0
            for _ in range(4):
                n += 1
                with_ckpt += epoch(True, n)
                without += epoch(False, n)
            ckpt.wait()
            if run:
                ratios.append(with_ckpt / without)
    shutil.rmtree(d, ignore_errors=True)
    r = med(ratios)
    print(f"   loop ratio every-epoch/none {r:8.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    return r


def goal(ok: bool, text: str) -> None:
    print(f"# goal {'MET   ' if ok else 'MISSED'} {text}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16MiB,256MiB,1GiB")
    ap.add_argument("--runs", type=int, default=5, help="runs per size (3 for sizes >= 1 GiB)")
    ap.add_argument("--dir", default=os.path.join("target", "bench-tmp", "torch-checkpoint"))
    ap.add_argument("--only", choices=["sizes", "loop"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.dir, exist_ok=True)
    st = os.statvfs(args.dir)
    print(f"# epochwal torch checkpoint benchmark: torch {torch.__version__}, epochwal {getattr(epochwal, '__version__', '?')}, "
          f"python {sys.version.split()[0]}, cores={os.cpu_count()}, threads=1")
    print(f"# dir={os.path.abspath(args.dir)} free={st.f_bavail * st.f_frsize / (1 << 30):.1f}GiB; "
          f"times are medians (min-max) over runs; peers' load is warm, cold_load and epochwal's load read the disk")
    results: Dict[int, Dict[str, Dict[str, float]]] = {}
    if args.only != "loop":
        for s in args.sizes.split(","):
            size = parse_size(s)
            results[size] = run_size(size, args.runs if size < (1 << 30) else min(args.runs, 3), args.dir)
    loop = run_loop(args.dir, 3) if args.only != "sizes" else None
    for size, r in results.items():
        tag = human(size)
        goal(r["pause/memcpy"]["median"] <= 1.2, f"{tag}: pause <= 1.2x memcpy: {r['pause/memcpy']['median']:.2f}x")
        goal(r["torch.save pause/pause"]["median"] >= 10, f"{tag}: pause >= 10x less than torch.save: {r['torch.save pause/pause']['median']:.1f}x")
        goal(r["torch.save durable/durable"]["median"] >= 1.5, f"{tag}: durable >= 1.5x faster than torch.save+fsync: {r['torch.save durable/durable']['median']:.2f}x")
        if size == 256 * MiB:
            goal(r["torch.load/load_latest"]["median"] >= 3, f"{tag}: load >= 3x faster than torch.load: {r['torch.load/load_latest']['median']:.2f}x "
                 f"(warm torch.load; against a cold torch.load, as epochwal's load always is: {r['cold torch.load/load_latest']['median']:.2f}x)")
    if loop is not None:
        goal(loop <= 1.03, f"loop checkpointing every epoch <= 1.03x one that does not: {loop:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
