"""SGD with heavy-ball momentum."""

import torch


def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"], momentum=hparams["momentum"])
