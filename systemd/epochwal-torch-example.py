#!/usr/bin/env python3
"""A PyTorch training loop run as a systemd service
(systemd/epochwal-torch-example.service), checkpointing into an epochwal
log in $STATE_DIRECTORY.

- Start: ``load_latest`` resumes from the newest intact record (or starts
  fresh) and sends READY=1, so ``systemctl start`` returns once training
  runs from a good state.
- Every epoch: a checkpoint; STATUS names the epoch, sequence and loss
  once it is durable; WATCHDOG=1 at every step.
- ``systemctl stop`` (SIGTERM): the handler only sets ``stop_requested``;
  the loop sees it at the next step boundary, writes a final checkpoint,
  waits for it to be durable, closes (STOPPING=1) and exits 0.

Environment: EPOCHWAL_EXAMPLE_EPOCHS (default 0: train until stopped),
EPOCHWAL_EXAMPLE_STEPS_PER_EPOCH (default 50).
Replace the model and data with yours; the checkpoint calls stay the same.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch
from torch import nn

from epochwal import Checkpointer


def main() -> int:
    """Trains until stopped or EPOCHWAL_EXAMPLE_EPOCHS epochs are done."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    state_dir = os.environ.get("STATE_DIRECTORY", "epochwal-torch-example")
    epochs = int(os.environ.get("EPOCHWAL_EXAMPLE_EPOCHS", "0"))
    steps_per_epoch = int(os.environ.get("EPOCHWAL_EXAMPLE_STEPS_PER_EPOCH", "50"))

    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.9)
    target = torch.randn(32, 1)

    with Checkpointer(state_dir, keep_records=5) as ckpt:
        ckpt.install_signal_handlers()
        restored = ckpt.load_latest(model=model, optimizer=opt, scheduler=sched, rng=True)
        if restored is None:
            epoch = step = 0
            print(f"fresh run in {state_dir}", flush=True)
        else:
            epoch, step = restored.epoch, restored.step
            print(
                f"resumed from seq={restored.seq} epoch={epoch} step={step}",
                flush=True,
            )
        loss: Optional[float] = None
        while not ckpt.stop_requested and (epochs == 0 or epoch < epochs):
            x = torch.randn(64, 32)
            loss_t = nn.functional.mse_loss(model(x), x @ target)
            opt.zero_grad()
            loss_t.backward()
            opt.step()
            loss = float(loss_t.detach())
            step += 1
            ckpt.notify_watchdog()
            if step % steps_per_epoch == 0:
                epoch += 1
                sched.step()
                ckpt.save(
                    epoch=epoch, step=step, model=model, optimizer=opt,
                    scheduler=sched, rng=True, loss=loss,
                )
        # Stopped (or done): one final checkpoint of the step just finished.
        seq = ckpt.save(
            epoch=epoch, step=step, model=model, optimizer=opt,
            scheduler=sched, rng=True, loss=loss,
        )
        ckpt.wait()
        why = "stop requested" if ckpt.stop_requested else "all epochs done"
        print(f"final checkpoint seq={seq} epoch={epoch} step={step} ({why})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
