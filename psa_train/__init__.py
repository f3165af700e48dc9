"""psa_train — PyTorch training: data sets, backbones, CAM and affinity networks, training loops."""

import os

# OpenMP threads that spin while waiting turn a busy 2-core machine into a 10-40x slowdown
# (measured: multi-scale CAMs of one 160 px image took 1.07 s instead of 27 ms with 2 threads
# under a load average of 4). Passive waiting costs nothing when the machine is idle. This must
# happen before torch loads its OpenMP runtime, hence here, before any submodule imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
