#!/usr/bin/env python3
"""The PyTorch side of `cargo bench --bench checkpoint`: the same tensors,
saved and loaded the way a PyTorch trainer would, timed here and reported to
the Rust bench, which interleaves each call with its own append or recovery.

Usage: torch_peer.py STATE.safetensors

Loads the state's tensors (written by the bench with safetensors) into torch
CPU tensors, then answers one command per line on stdin with one line on
stdout:

    save PATH   torch.save(tensors, PATH), then fsync    -> save_ms=.. fsync_ms=..
    load PATH   torch.load(PATH, weights_only=True)      -> load_ms=..
    quit

The first line printed is `ready bytes=N` (N: bytes of tensor data held), or
`no-torch reason=...` when torch (or safetensors' torch support) cannot be
imported; the bench then prints "skipped: no torch".
"""

import os
import sys
import time


def main():
    if len(sys.argv) != 2:
        print("usage: torch_peer.py STATE.safetensors", file=sys.stderr)
        return 2
    try:
        import torch
        from safetensors.torch import load_file
    except Exception as e:  # ImportError, or a broken install
        print(f"no-torch reason={type(e).__name__}", flush=True)
        return 0
    tensors = load_file(sys.argv[1])
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"ready bytes={nbytes} torch={torch.__version__}", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "save":
            t0 = time.perf_counter()
            torch.save(tensors, arg)
            t1 = time.perf_counter()
            fd = os.open(arg, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            t2 = time.perf_counter()
            print(f"save_ms={(t1 - t0) * 1e3:.3f} fsync_ms={(t2 - t1) * 1e3:.3f}", flush=True)
        elif cmd == "load":
            t0 = time.perf_counter()
            loaded = torch.load(arg, weights_only=True)
            t1 = time.perf_counter()
            assert loaded.keys() == tensors.keys(), "torch.load returned other tensors"
            del loaded
            print(f"load_ms={(t1 - t0) * 1e3:.3f}", flush=True)
        elif cmd == "quit":
            break
        else:
            print(f"error unknown command {cmd!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
