"""asv timings of `ldbench score` and `ldbench leaderboard build` on ENTRIES synthetic entries.

The same steps as benchmarks/leaderboard_build.py (which times 1,000 entries against the
README's target), at a size asv can afford on every commit: generating the entries takes
about 0.2 s each and is done once (`setup_cache`, in asv's cache folder).
"""

from __future__ import annotations

from pathlib import Path

ENTRIES = 100


def steps():
    """leaderboard_build's functions, or NotImplementedError (asv: skipped) at a commit whose
    suite lacks what they call."""
    try:  # the installed suite first: leaderboard_build, a script, puts this checkout on sys.path
        from suite import score  # noqa: F401
        from suite.site import build, synthetic  # noqa: F401

        from . import leaderboard_build
    except ImportError as err:
        raise NotImplementedError(f"no synthetic entries or site build at this commit ({err})") from None
    return leaderboard_build


class Leaderboard:
    """Wall time of `score` and of `leaderboard build` (into the same folder each repeat, as a
    rebuild does) for ENTRIES entries of both tracks, every task, 5 seeds."""

    timeout = 900
    number = 1  # one call is seconds long
    repeat = (3, 5, 120.0)

    def setup_cache(self) -> str:
        root = Path.cwd() / "leaderboard-bench"
        steps().make_entries(root / "submissions", ENTRIES, seed=0)
        return str(root)

    def setup(self, root: str) -> None:
        self.submissions, self.out = Path(root) / "submissions", Path(root) / "leaderboard"
        steps().score_step(self.submissions, self.out)  # build refuses stale or missing scores

    def time_score(self, root: str) -> None:
        steps().score_step(self.submissions, self.out)

    def time_build(self, root: str) -> None:
        steps().build_step(self.submissions, self.out)
