"""psa_infer — the deployable, torch-free labeling runtime.

Only numpy, pillow and onnx are imported at module level; onnxruntime, tensorrt and
cuda-python are imported lazily inside the backend that needs them. Never torch.
"""

__version__ = "0.1.0"
