"""psa_infer — the deployable, torch-free labeling runtime.

    import psa_infer
    with psa_infer.open_bundle("bundle") as model:
        result = model.label("photo.jpg", classes=["cat"])   # or classes=None: predicted
    result.label, result.record                               # (H, W) uint8 ids, a dict

Only numpy, pillow and onnx are imported at module level; onnxruntime, tensorrt and
cuda-python are imported lazily inside the backend that needs them. Never torch.
"""

__version__ = "0.1.0"

__all__ = ["open_bundle", "load_image"]


def __getattr__(name: str):
    # The API's entry points, imported when first used: `import psa_infer` stays light.
    if name == "open_bundle":
        from psa_infer.bundle import open_bundle

        return open_bundle
    if name == "load_image":
        from psa_infer.datasets import load_image

        return load_image
    raise AttributeError(f"module 'psa_infer' has no attribute {name!r}")
