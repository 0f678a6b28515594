"""The PyTorch side of the `train_vs_torch` benchmark.

Trains the same MLP as epochwal's trainer on CPU (Linear layers with ReLU
between them, MSE, torch.optim.Adam with PyTorch's defaults, a fresh random
order of the rows every epoch, mini-batches gathered by index as epochwal
does), and prints one JSON object with the time of every epoch in ms.
The first `warmup` epochs are run but not reported.

usage: python3 train_vs_torch.py N INPUT HIDDEN(a:b:...) OUTPUT BATCH EPOCHS THREADS [WARMUP]
"""

import json
import sys
import time

import torch


def main():
    n, d_in = int(sys.argv[1]), int(sys.argv[2])
    hidden = [int(h) for h in sys.argv[3].split(":") if h]
    d_out, batch, epochs, threads = (int(a) for a in sys.argv[4:8])
    warmup = int(sys.argv[8]) if len(sys.argv) > 8 else 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sizes = [d_in] + hidden + [d_out]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    x = torch.rand(n, d_in) * 2 - 1
    y = torch.rand(n, d_out) * 2 - 1
    times = []
    for epoch in range(warmup + epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
        elapsed = (time.perf_counter() - t0) * 1e3
        if epoch >= warmup:
            times.append(elapsed)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epoch_ms": times,
        "final_loss": float(loss.detach()),
    }))


if __name__ == "__main__":
    main()
