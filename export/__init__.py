"""export — torch → ONNX, ONNX → TensorRT engine, parity verification."""

# psa_train sets OMP_WAIT_POLICY=PASSIVE, which only works before torch loads its OpenMP
# runtime; export modules import torch, so make sure it happens first whichever is imported.
import psa_train  # noqa: F401
