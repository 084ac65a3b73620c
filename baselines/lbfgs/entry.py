"""L-BFGS with a strong-Wolfe line search: the harness calls step(closure) (closure = true)."""

import torch


def make_optimizer(params, hparams, task):
    # max_iter=1: one quasi-Newton iteration per harness step, so the step budget compares with
    # first-order entries (the line search may still evaluate the closure a few more times).
    return torch.optim.LBFGS(params, lr=hparams["lr"], max_iter=hparams["max_iter"],
                             history_size=hparams["history_size"], line_search_fn="strong_wolfe")
