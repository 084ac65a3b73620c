"""Plain (stochastic) gradient descent: the reference dynamics most theory is written for."""

import torch


def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"])
