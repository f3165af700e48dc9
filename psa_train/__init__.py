"""psa_train — PyTorch training: data sets, backbones, CAM and affinity networks, training loops."""

__version__ = "0.1.0"
