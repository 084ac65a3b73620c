"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""

import torch


def make_optimizer(params, hparams, task):
    return torch.optim.AdamW(params, lr=hparams["lr"], betas=(hparams["beta1"], hparams["beta2"]),
                             weight_decay=hparams["weight_decay"])
