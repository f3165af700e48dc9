"""CUDA against CPU: a training step and the torch labeler (marked ``gpu``; skip without CUDA).

``make gpu-check`` runs these on a GPU machine (benchmarks/gpu_check.py). TF32 is turned off
while they run: on Ampere and later PyTorch may run float32 convolutions in TF32 (10-bit
mantissa), which would compare TF32 with FP32 instead of one device with another.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def fp32_cuda():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_training_step_on_cuda_matches_cpu(fp32_cuda):
    import torch.nn.functional as F

    from psa_train.train_cam import build_cam_model

    torch.manual_seed(0)
    cpu_model = build_cam_model("tiny", None, 3)
    gpu_model = build_cam_model("tiny", None, 3)
    gpu_model.load_state_dict(cpu_model.state_dict())
    for model in (cpu_model, gpu_model):
        # Dropout2d is the one random layer, and each device draws from its own generator.
        model.dropout = torch.nn.Identity()
    gpu_model.to(fp32_cuda)
    before = {k: v.clone() for k, v in cpu_model.state_dict().items()}
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    losses = []
    for model, dev in ((cpu_model, "cpu"), (gpu_model, fp32_cuda)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):  # the second step also checks momentum buffers
            opt.zero_grad()
            loss = F.multilabel_soft_margin_loss(model(x.to(dev)), y.to(dev))
            loss.backward()
            opt.step()
        losses.append(loss.item())
    # Same weights, same batch: only the order of float32 sums differs between cuDNN and the
    # CPU kernels (~1e-7 relative per op); after two steps of lr 0.1 that stays below 1e-5.
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    cpu_state, gpu_state = cpu_model.state_dict(), gpu_model.state_dict()
    for name, a in cpu_state.items():
        b = gpu_state[name].cpu().numpy()
        np.testing.assert_allclose(b, a.numpy(), rtol=0, atol=1e-5, err_msg=name)
    moved = max((cpu_state[k] - v).abs().max().item() for k, v in before.items())
    assert moved > 0  # the steps changed the weights


def test_the_torch_labeler_on_cuda_agrees_with_cpu(tiny_bundle, fp32_cuda):
    from dataclasses import replace

    from psa_infer.datasets import load_image
    from psa_train.label import torch_labeler

    labelers = {
        dev: torch_labeler(
            tiny_bundle.cam, tiny_bundle.aff, replace(tiny_bundle.label_cfg, device=dev),
            tiny_bundle.cam_cfg,
        )[0]
        for dev in ("cpu", "cuda")
    }  # fmt: skip
    images = sorted((tiny_bundle.data / "JPEGImages").glob("*.jpg"))
    agree = []
    for path in images:
        img = load_image(path)
        feats = {d: lab.features(img) for d, lab in labelers.items()}
        # raw network outputs: float32 kernels of two devices (DESIGN's FP32 rung: ~1e-4)
        np.testing.assert_allclose(feats["cuda"], feats["cpu"], rtol=0, atol=1e-4)
        a, b = (lab.label(img, [1, 2]) for lab in labelers.values())
        agree.append((a == b).mean())
    # the labels are an argmax after a 256-step walk: near-ties may flip a pixel or two
    assert min(agree) >= 0.999, agree
