"""Adam (Kingma & Ba 2015) with L2-free defaults."""

import torch


def make_optimizer(params, hparams, task):
    return torch.optim.Adam(params, lr=hparams["lr"], betas=(hparams["beta1"], hparams["beta2"]))
