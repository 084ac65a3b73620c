"""ldbench: a benchmark suite and leaderboard for the learning dynamics of neural networks."""

import os

# OpenMP threads that spin while waiting make torch 10-70x slower whenever the cores are shared
# (CI, laptops); passive waiting costs nothing measurable here. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
