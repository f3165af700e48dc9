"""torch → ONNX: the CAM network (``cam.onnx``) and AffinityNet (``aff.onnx``).

``cam.onnx``: ``image`` (B, 3, H, W) float32 → ``cams`` (B, C, h, w) float32 (ReLU'd, equal to
``CAMNet.cam``) and ``logits`` (B, C) float32 (equal to ``CAMNet.forward`` in eval mode), from
one pass through the backbone. ``aff.onnx``: ``image`` → ``features`` (B, D, h, w) float32.
B, H and W are dynamic; h = ceil(H/8), w = ceil(W/8) come out of the convolutions' own size
arithmetic, never from constants taken at the tracing size (the tests check odd sizes).

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) by default.
Measured here (torch 2.13, 2 CPU cores, medians; ``benchmarks/export_bench.py``), per graph:
tiny 0.04 s vs 1.9 s with the dynamo exporter, MobileNetV2 0.4 s vs 12 s; both give the same
outputs (to 1e-7 at 61×47). The deciding reason is the opset: asked for opset 17, the dynamo
exporter writes opset 18 (its down-conversion fails on ReduceMean, whose axes became an input
in 18), and TensorRT 8.5 — JetPack 5's — reads opsets up to 17, which rw.onnx uses too. The
TorchScript exporter is deprecated; ``exporter="dynamo"`` is kept (opset >= 18) for the day it
is removed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psa_infer.backends import AFF_FEATURES, AFF_IMAGE, CAM_CAMS, CAM_IMAGE, CAM_LOGITS
from psa_train.networks import AffinityNet, CAMNet

EXPORTERS = ("torchscript", "dynamo")
# Tracing size: not a multiple of 8 and not square, so that a size-dependent constant baked in
# at trace time would break the odd sizes the tests run.
_TRACE_SIZE = (75, 53)
# Dimension names of the graphs' inputs and outputs (recorded in meta.json).
IMAGE_DIMS = {0: "B", 2: "H", 3: "W"}
MAP_DIMS = {0: "B", 2: "h", 3: "w"}


class CamExport(nn.Module):
    """``image`` → (``cams``, ``logits``) of a CAMNet with one backbone pass.

    In eval mode ``CAMNet.forward``'s Dropout2d is the identity, so its logits are
    ``fc8(GAP(high))``; they are computed here in the same order (pool, then the 1×1 conv) so
    that they match the network's to rounding.
    """

    def __init__(self, net: CAMNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        high = self.net.backbone(image)[2]
        cams = F.relu(self.net.fc8(high))
        logits = self.net.fc8(high.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return cams, logits


class AffExport(nn.Module):
    """``image`` → ``features`` of an AffinityNet (its forward is already the export path)."""

    def __init__(self, net: AffinityNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


def _name_dims(model: onnx.ModelProto, dims: dict[str, dict[int, str]]) -> None:
    """Give the dynamic axes of the graph's inputs and outputs the names in ``dims``.

    The dynamo exporter names output axes by their formulas ('(((H - 1)//8)) + 1'); the bundle's
    meta.json and the engine profiles want the same short names whichever exporter ran.
    """
    for value in [*model.graph.input, *model.graph.output]:
        shape = value.type.tensor_type.shape
        for axis, name in dims.get(value.name, {}).items():
            shape.dim[axis].dim_param = name


def _finish(model: onnx.ModelProto, path: Path, opset: int) -> onnx.ModelProto:
    """Check the opset, lower the IR version, infer shapes, run the full checker, save."""
    got = {o.domain: o.version for o in model.opset_import}.get("", None)
    if got != opset:
        raise ValueError(f"{path.name}: asked for opset {opset}, the exporter wrote {got}")
    # The oldest IR version that carries the opset (8 for 17), as rw.onnx: older TensorRT
    # parsers refuse newer IR versions for no gain.
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, path)
    return model


def export_module(
    module: nn.Module,
    path: str | Path,
    input_name: str,
    outputs: dict[str, dict[int, str]],
    opset: int = 17,
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """Export ``module`` (one (B, 3, H, W) float32 input) to ``path``; returns the model.

    ``outputs`` maps each output name, in the module's return order, to its dynamic axes
    ({axis: name}). The module is exported in eval mode on the CPU, without gradients.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: expected one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "dynamo" and opset < 18:
        raise ValueError(f"exporter 'dynamo' writes opset 18 or later, got opset {opset}")
    path = Path(path)
    module = module.eval().cpu()
    sample = torch.zeros(1, 3, *_TRACE_SIZE)
    names = list(outputs)
    with torch.no_grad():
        if exporter == "torchscript":
            with warnings.catch_warnings():
                # Its deprecation warning is the choice documented above, not news to a user.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    module,
                    (sample,),
                    str(path),
                    input_names=[input_name],
                    output_names=names,
                    dynamic_axes={input_name: IMAGE_DIMS, **outputs},
                    opset_version=opset,
                    dynamo=False,
                )
            model = onnx.load(path)
        else:
            dims = {axis: torch.export.Dim(name) for axis, name in IMAGE_DIMS.items()}
            program = torch.onnx.export(
                module,
                (sample,),
                input_names=[input_name],
                output_names=names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=(dims,),
                verbose=False,
            )
            model = program.model_proto
    _name_dims(model, {input_name: IMAGE_DIMS, **outputs})
    return _finish(model, path, opset)


def export_cam(
    net: CAMNet, path: str | Path, opset: int = 17, exporter: str = "torchscript"
) -> onnx.ModelProto:
    """``cam.onnx``: ``image`` → ``cams`` (B, C, h, w), ``logits`` (B, C)."""
    outputs = {CAM_CAMS: MAP_DIMS, CAM_LOGITS: {0: "B"}}
    return export_module(CamExport(net), path, CAM_IMAGE, outputs, opset, exporter)


def cam_checkpoint_forward(checkpoint: str | Path, threads: int | None = None):
    """A CAM checkpoint as ``psa_infer.cam``'s numpy ``forward`` on ONNX Runtime (CPU): the
    network exported to cam.onnx (in a temporary folder, gone once the session holds it) and
    run by ``OnnxRuntimeBackend``. Returns (forward, meta of the checkpoint).

    make-cam on a CPU takes it instead of torch: 3 scales + flip of a 160-px image cost
    0.09 s here against 0.27-0.30 s for the torch network (2 cores, MobileNetV2), with CAMs
    equal to ~1e-5 of their maximum.
    """
    import tempfile

    from psa_infer.backends import OnnxRuntimeBackend, cam_forward_from
    from psa_train.train_cam import load_cam_model

    net, meta = load_cam_model(checkpoint)
    with tempfile.TemporaryDirectory(prefix="psa-cam-") as tmp:
        path = Path(tmp) / "cam.onnx"
        export_cam(net, path)
        backend = OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"], threads=threads)
    return cam_forward_from(backend), meta


def export_aff(
    net: AffinityNet, path: str | Path, opset: int = 17, exporter: str = "torchscript"
) -> onnx.ModelProto:
    """``aff.onnx``: ``image`` → ``features`` (B, D, h, w)."""
    outputs = {AFF_FEATURES: MAP_DIMS}
    return export_module(AffExport(net), path, AFF_IMAGE, outputs, opset, exporter)
