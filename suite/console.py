"""The `ldbench` command's entry point: Ctrl-C while the command line loads ends as it does later."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """Load the command line (torch and the rest: seconds), then run it.

    A Ctrl-C during the load is held until the load ends and then stops the command with
    click's one word: raised inside torch's C++ extension loading it aborts the interpreter,
    and raised in Python it prints a traceback through importlib."""
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from suite.cli import main as cli
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        print("Aborted!", file=sys.stderr)
        raise SystemExit(1)  # click's exit status for Ctrl-C
    cli()
