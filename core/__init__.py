"""Pipeline-independent pieces: cameras, configuration, input images, the SIR loop, timing."""

import os

# Busy-waiting OpenMP threads make small CPU tensor ops 10x slower on shared/small machines; this
# must be set before torch is imported, and every entry point imports `core` first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
