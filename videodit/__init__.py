"""videodit: an open, Sora-style text-to-video system (causal 3D VAE + flow-matching DiT).

Importing videodit sets what the ``videodit`` command and library users share: videodit's
warnings print as one line (videodit.errors), and torch's OpenMP threads wait passively (below);
``use_cpu_threads`` is the thread count policy, applied by Pipeline.load and by the commands
that run torch.
"""

import os
import sys
import warnings

from videodit.errors import VideoditWarning, install_warning_format

__version__ = "0.1.0"

# OpenMP threads that spin while waiting for work make every torch op 5-50x slower as soon as
# another process holds a core (30 sampling steps took 86 s instead of 1.7 s next to a 2-thread
# training run on a 2-core CPU). libgomp, torch's OpenMP runtime, reads OMP_WAIT_POLICY once, when
# `import torch` loads it: set afterwards it changes nothing in that process (torch 2.13 CPU, a
# 2-thread matmul loop next to a process spinning one core: 4.6-20 s unset, 8-22 s set after
# importing torch, 0.4-0.55 s set before). So it is set here, before videodit imports torch; an
# explicit OMP_WAIT_POLICY from the user wins. Child processes inherit it either way.
TORCH_LOADED_FIRST = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
install_warning_format()


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask (taskset, a container's cpuset) and its
    cgroup's CPU quota (docker --cpus, which torch's default thread count does not read)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()  # cgroup v2: "max 100000" = no quota
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return n


def use_cpu_threads() -> None:
    """At most one torch thread per CPU this process may run on. OMP_NUM_THREADS wins, and a
    smaller count set with torch.set_num_threads stays; only more threads than CPUs, which
    never helps, are cut."""
    import torch

    global TORCH_LOADED_FIRST
    if TORCH_LOADED_FIRST:
        TORCH_LOADED_FIRST = False  # said once
        warnings.warn("torch was imported before videodit, so its OpenMP threads busy-wait between ops, "
                      "many times slower when other processes hold CPU cores; import videodit first or "
                      "set OMP_WAIT_POLICY=PASSIVE before starting Python", VideoditWarning, stacklevel=3)
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > cpu_count():
        torch.set_num_threads(cpu_count())
