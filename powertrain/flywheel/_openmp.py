"""OpenMP threads that wait by sleeping: PyTorch on a CPU shared with other work.

PyTorch's CPU build runs its kernels on OpenMP threads that spin between
parallel regions. When other processes hold the cores, a spinning thread burns
the time slice its partner needs: measured on 2 busy cores (load ~6), a LoRA
forward+backward took 193 ms per token on 2 threads, 17 ms on 1 thread and
20 ms on 2 threads with ``OMP_WAIT_POLICY=PASSIVE``. OpenMP reads the policy
once, when PyTorch loads, so it is set (unless the user set it) before the
first ``import torch``; afterwards it is too late and nothing changes.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_openmp() -> bool:
    """Ask for sleeping OpenMP waits if PyTorch is not loaded yet; True if it took effect."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
