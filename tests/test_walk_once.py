"""psa_pipeline.WalkOnce: the pipeline's walk and walk + CRF labelings of one split share a
walk; the labels are a plain Labeler's, bit for bit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from psa_infer.pipeline import REFERENCE_WALK, Labeler
from psa_pipeline import WalkOnce
from tests.psa_infer.test_cam import MEAN, STD, image, local_net


def counted(net, calls: list):
    def forward(x):
        calls.append(x.shape)
        return net(x)

    return forward


def labelers(keep=5000):
    calls = {"cam": [], "aff": []}
    params = replace(REFERENCE_WALK, steps=8, normalize=True)
    plain = Labeler(local_net(6, 1), local_net(8, 2), MEAN, STD, (1.0, 0.5), walk_params=params)
    counting = replace(
        plain,
        cam_forward=counted(plain.cam_forward, calls["cam"]),
        aff_forward=counted(plain.aff_forward, calls["aff"]),
    )
    return plain, WalkOnce.of(counting, keep=keep), calls


def test_two_passes_walk_each_image_once_and_label_as_a_plain_labeler():
    plain, once, calls = labelers()
    imgs = [image(41, 57, seed=i) for i in range(3)]
    for crf in (False, True):
        for img in imgs:
            np.testing.assert_array_equal(
                once.label(img, [2, 5], crf=crf), plain.label(img, [2, 5], crf=crf)
            )
    # One pass of the networks per image: AffinityNet once, the CAM network once per scale
    # (each batch holds the image and its mirror).
    assert len(calls["aff"]) == 3 and len(calls["cam"]) == 3 * 2
    assert once.kept == {}  # each image's scores handed out twice, then let go


def test_other_inputs_or_a_full_store_walk_again():
    _, once, calls = labelers()
    img = image(41, 57)
    cams = np.random.default_rng(0).random((2, 41, 57), dtype=np.float32)
    once.label(img, [2, 5], cams=cams)
    once.label(img, [2, 5], cams=cams * 0.5)  # other CAMs: another walk
    once.label(img, [2], cams=cams[:1])
    assert len(calls["aff"]) == 3 and len(once.kept) == 3
    _, none_kept, calls = labelers(keep=0)
    none_kept.label(img, [2, 5])
    none_kept.label(img, [2, 5], crf=True)
    assert len(calls["aff"]) == 2 and none_kept.kept == {}
