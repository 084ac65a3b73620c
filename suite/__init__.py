"""ldbench: a benchmark suite and leaderboard for the learning dynamics of neural networks."""

from suite import startup

# OpenMP's wait policy is a setting of the hardware profile (`omp_wait_policy`), and it only
# takes effect if set before torch loads: chosen here, from the profile named on the command
# line or in LDBENCH_PROFILE, before any suite module imports torch (suite/startup.py).
startup.choose()

__version__ = "0.1.0"
