"""AdamW with linear warm-up and cosine decay to zero at the step budget (through make_schedule)."""

import math

import torch


def make_optimizer(params, hparams, task):
    return torch.optim.AdamW(params, lr=hparams["lr"], betas=(hparams["beta1"], hparams["beta2"]),
                             weight_decay=hparams["weight_decay"])


def make_schedule(optimizer, hparams, task):
    # task.steps is the step budget of each network; the harness steps the schedule once after
    # every optimizer step (a mode-connectivity child continues its parent's schedule).
    warmup = max(1, round(hparams["warmup_fraction"] * task.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, task.steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
