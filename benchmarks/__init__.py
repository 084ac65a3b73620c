"""airspeed velocity benchmarks of ldbench (see asv.conf.json) and `speed.py`, the batching report."""

# suite sets the profile's OpenMP wait policy, which must happen before any benchmark module loads torch.
import suite  # noqa: F401
