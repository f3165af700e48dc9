"""Dense CRF refinement of score maps (SPEC §2: the reference's ``crf_inference``).

Uses ``pydensecrf2`` (module ``pydensecrf``), imported when the function is called so that the
rest of the runtime works without it.
"""

from __future__ import annotations

import numpy as np

from psa_infer.errors import PsaError
from psa_infer.randomwalk import _describe

# The reference's bilateral kernel width in pixels (SPEC §2), made for VOC's ~500-px photos.
REFERENCE_BILATERAL_SXY = 80.0


def crf_inference(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = 10,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = REFERENCE_BILATERAL_SXY,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """Mean-field dense CRF marginals, (L, H, W) float32; every pixel's column sums to 1.

    image: (H, W, 3) uint8 RGB image the scores belong to (drives the bilateral kernel).
    probs: (L, H, W) float32 non-negative label scores (need not sum to 1, as the reference's
    ``[bg; cams]`` maps). The unary is ``-log(clip(probs, 1e-5, 1))`` (pydensecrf's
    ``unary_from_softmax``); the pairwise terms are a Gaussian kernel (``gaussian_sxy``,
    ``gaussian_compat``) and a bilateral kernel (``bilateral_sxy``, ``bilateral_srgb``,
    ``bilateral_compat``); ``iterations`` mean-field steps. Defaults are the reference's
    (3/3, 80/13/10, 10 iterations).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {_describe(image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {_describe(image)}")
    h, w = image.shape[:2]
    if (
        not isinstance(probs, np.ndarray)
        or probs.ndim != 3
        or probs.shape[1:] != (h, w)
        or probs.shape[0] < 1
        or probs.dtype != np.float32
    ):
        raise ValueError(
            f"probs: expected (L, {h}, {w}) float32 with L >= 1 for an image of shape "
            f"{image.shape}, got {_describe(probs)}"
        )
    if not np.isfinite(probs).all():
        raise ValueError("probs: expected finite values, got NaN or inf")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise ValueError(f"iterations: expected an integer >= 0, got {iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations: expected an integer >= 0, got {iterations!r}")
    if h == 0 or w == 0:
        raise ValueError(f"image: expected a non-empty image, got {image.shape}")
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise PsaError(
            "the dense CRF needs the module 'pydensecrf' (PyPI: pydensecrf2), which is not "
            "installed: install psa's 'crf' extra (pip install -e '.[crf]' in a checkout)"
        ) from err

    labels = probs.shape[0]
    unary = -np.log(np.clip(probs, np.float32(1e-5), np.float32(1.0)))
    crf = dcrf.DenseCRF2D(w, h, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(labels, h * w), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    # pydensecrf keeps a pointer into the image and rejects read-only or strided buffers.
    rgb = np.array(image, dtype=np.uint8, order="C", copy=True)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_compat
    )
    marginals = crf.inference(int(iterations))
    return np.asarray(marginals, dtype=np.float32).reshape(labels, h, w)
