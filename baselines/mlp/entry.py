"""The reference model of each task, entered on the architecture track (its reference row).

With no make_optimizer, every task trains it with the optimizer its model interface declares,
so its rows show what the track's other entries are compared against.
"""


def make_model(task, hparams, generator):
    # None for an optimizer-only task (no interface): recorded as not applicable.
    return task.reference_model(generator) if task.interface is not None else None
