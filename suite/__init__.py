"""ldbench: a benchmark suite and leaderboard for the learning dynamics of neural networks."""

__version__ = "0.1.0"
