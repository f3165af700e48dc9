"""Labeling: image + present classes → pseudo label map (SPEC §5), for every backend.

The networks are reached through two numpy callables (the torch model before export, an ONNX
Runtime session or a TensorRT engine after):

* ``cam_forward(batch (B, 3, h, w) float32) -> (B, C, h8, w8)`` ReLU'd CAMs at stride 8;
* ``aff_forward(batch (1, 3, Hp, Wp) float32) -> (1, D, Hp/8, Wp/8)`` affinity features.

Everything between and after them — multi-scale CAMs, background power, padding, pooling, pair
affinities, the random walk, upsampling, argmax, optional dense CRF — is numpy, here, once.
The image is normalised once per label (the scale-1 CAM input is also AffinityNet's input);
large network inputs run in tiles (``Labeler.tile``, ``psa_infer.cam.forward_tiled``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psa_infer.cam import STRIDE, TILE, TILE_MARGIN, forward_tiled, multiscale_cam, normalize_image
from psa_infer.crf import REFERENCE_BILATERAL_SXY
from psa_infer.datasets import Sample
from psa_infer.errors import PsaError
from psa_infer.ops import avg_pool, pad_to_multiple, resize_bilinear, scores_with_background
from psa_infer.randomwalk import pair_affinity, random_walk

# Stage names of ``Labeler.label(..., times=...)``, in the order they run.
STAGES = ("normalize", "cam", "features", "walk", "upsample", "crf", "argmax")


@dataclass(frozen=True)
class WalkParams:
    """The random walk's settings, in one place: the config's ``label`` section
    (``LabelConfig.walk()``), meta.json (``to_meta``/``from_meta``) and the runtime read them
    from here. ``REFERENCE_WALK`` holds the defaults (SPEC §5)."""

    alpha: float  # background power of the scores that start the walk
    beta: float  # power on the affinities
    steps: int  # t = 2 ** logt
    radius: int  # pair radius on the walk's grid (``stride``)
    pairs: str  # "full" (every in-bounds pair) or "psa" (the reference's set)
    # Divide each walked channel by its maximum over the image (``peak_normalize``), so that
    # every present class, and the background, keeps its peak whatever the walk spread over
    # it. The reference compares the raw walked scores (False).
    normalize: bool = False
    # Width in pixels of the dense CRF's bilateral kernel (``label --crf``); the reference's
    # (SPEC §2) is the default.
    crf_sxy: float = REFERENCE_BILATERAL_SXY
    # The grid the walk runs on, in pixels: 8 (the features' own, the reference's) or 4 (the
    # features upsampled ×2 bilinearly, the seeds pooled 4×4, the scores upsampled ×4).
    stride: int = STRIDE

    def to_meta(self) -> dict:
        """rw.onnx's settings as meta.json keys (alpha goes under alpha.label; normalize,
        crf_sxy and the walk stride under their own keys: none is part of the walk graph)."""
        return {
            "radius": int(self.radius),
            "beta": float(self.beta),
            "steps": int(self.steps),
            "pairs": self.pairs,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> WalkParams:
        """The settings a bundle was exported with (its meta.json)."""
        return cls(
            alpha=float(meta["alpha"]["label"]),
            beta=float(meta["beta"]),
            steps=int(meta["steps"]),
            radius=int(meta["radius"]),
            pairs=meta["pairs"],
            # Bundles exported before the key existed compare the raw walked scores.
            normalize=bool(meta.get("normalize", False)),
            crf_sxy=float(meta.get("crf_sxy", REFERENCE_BILATERAL_SXY)),
            stride=int(meta.get("walk_stride", STRIDE)),  # absent: the features' stride
        )


# The reference's walk (SPEC §5): α 16, β 8, t = 2**8, radius 5; every pair of the disk.
REFERENCE_WALK = WalkParams(alpha=16.0, beta=8.0, steps=256, radius=5, pairs="full")


def walk_scores(
    cams: np.ndarray, features: np.ndarray, params: WalkParams, walk=None
) -> np.ndarray:
    """Random-walk class scores at image resolution, (K+1, Hp, Wp) float32 (channel 0 = bg).

    ``cams`` (K, H, W) normalised CAMs of the present classes; ``features`` (D, Hp/8, Wp/8).
    ``walk(scores, features)`` replaces the numpy walk (e.g. the exported rw.onnx) when given.
    """
    return upsample_scores(walk_scores_at_stride(cams, features, params, walk), params.stride)


# The walk's grids: the features' stride, or half of it (WalkParams.stride).
WALK_STRIDES = (STRIDE, STRIDE // 2)


def walk_seeds(cams: np.ndarray, alpha: float, stride: int = STRIDE) -> np.ndarray:
    """The walk's starting scores ``[bg; cams]`` at ``stride``, (K+1, Hp/s, Wp/s) float32.

    Background at the original size, then zero padding in every channel to a multiple of 8
    (SPEC §5 step 2), then a ``stride``×``stride`` average pool (8×8 in the reference).
    """
    if stride not in WALK_STRIDES:
        raise ValueError(f"walk stride: expected one of {WALK_STRIDES}, got {stride!r}")
    scores = pad_to_multiple(scores_with_background(cams, alpha), STRIDE, 0.0)
    return avg_pool(scores, stride)


def walk_scores_at_stride(
    cams: np.ndarray, features: np.ndarray, params: WalkParams, walk=None
) -> np.ndarray:
    """``walk_scores`` before its upsampling: (K+1, Hp/s, Wp/s) float32 at the walk's stride s.

    ``features`` are at stride 8 (D, Hp/8, Wp/8); a walk at stride 4 upsamples them ×2
    (bilinear) first, so ``walk`` always gets features on the grid of the seeds.
    """
    h, w = cams.shape[1:]
    v = walk_seeds(cams, params.alpha, params.stride)
    grid = (v.shape[1] * params.stride // STRIDE, v.shape[2] * params.stride // STRIDE)
    if features.shape[1:] != grid:
        raise ValueError(
            f"affinity features: expected (D, {grid[0]}, {grid[1]}) for a "
            f"{h}x{w} image, got {features.shape}"
        )
    if params.stride != STRIDE:
        features = resize_bilinear(np.ascontiguousarray(features, np.float32), v.shape[1:])
    if walk is not None:
        walked = np.asarray(walk(v, features), np.float32)
    else:
        aff = pair_affinity(features, radius=params.radius, pairs=params.pairs)
        walked = random_walk(v, aff, beta=params.beta, steps=params.steps, radius=params.radius)
    return peak_normalize(walked) if params.normalize else walked


# peak_normalize raises no channel whose peak is below this share of the strongest channel's.
PEAK_FLOOR = 1e-3


def peak_normalize(scores: np.ndarray) -> np.ndarray:
    """Each channel of (C, h, w) scores divided by its maximum (all-zero channels stay zero).

    The walk makes every score a weighted mean of the scores around it. Where AffinityNet's
    affinities are weak across an object's edge, the large background's scores flow into a
    small object and its class's scores flow out, until no pixel of the object prefers its
    class: a present class vanishes from the label. After this every channel peaks at 1, so
    the argmax keeps each class at least where its walked score is highest.

    A channel whose peak is below ``PEAK_FLOOR`` of the strongest channel's is divided by that
    floor instead: it holds no evidence worth raising, and where a walk has mixed a channel
    flat, raising it to 1 would tie it with the others and leave the argmax to rounding.
    """
    peak = scores.reshape(len(scores), -1).max(axis=1, initial=0.0)
    peak = np.maximum(peak, PEAK_FLOOR * peak.max(initial=0.0))
    return (scores / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def upsample_scores(scores: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Scores at ``stride`` (C, h, w) → (C, stride·h, stride·w) float32, bilinear (the
    reference's upsampling, from stride 8)."""
    return resize_bilinear(scores, (scores.shape[1] * stride, scores.shape[2] * stride))


def scores_to_label(scores: np.ndarray, keys: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """Argmax over [bg; present classes], cropped to ``size`` → (H, W) uint8 class ids."""
    lut = np.concatenate([[0], np.asarray(keys, np.int64)]).astype(np.uint8)
    h, w = size
    return lut[scores[:, :h, :w].argmax(axis=0)]


def crf_refine(
    img: np.ndarray, scores: np.ndarray, bilateral_sxy: float = REFERENCE_BILATERAL_SXY
) -> np.ndarray:
    """Dense-CRF the walked scores (normalised per pixel to a distribution): (K+1, H, W)."""
    from psa_infer.crf import crf_inference

    h, w = img.shape[:2]
    s = np.maximum(scores[:, :h, :w], 0)
    p = s / np.maximum(s.sum(axis=0, keepdims=True), 1e-5)
    return crf_inference(img, p.astype(np.float32), bilateral_sxy=bilateral_sxy)


def classes_above(scores: np.ndarray, threshold: float | Sequence[float]) -> tuple[int, ...]:
    """Class ids 1..C whose score exceeds its threshold (a number, or one per class)."""
    t = np.broadcast_to(np.asarray(threshold, np.float32), scores.shape)
    return tuple(int(c) + 1 for c in np.flatnonzero(scores > t))


@contextmanager
def _timed(times: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Add the seconds the block takes to ``times[stage]`` (nothing when ``times`` is None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if times is not None:
            times[stage] = times.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class Labeler:
    """Turns images into pseudo labels with the given network callables.

    ``tile``: network inputs with a side above this many pixels run in tiles with
    ``tile_margin`` pixels of context (``psa_infer.cam.forward_tiled``), which bounds memory
    for large images (a 2048² image: 1.6 GB instead of 17 GB at scale 2.0); None never tiles.
    The default leaves images up to 512 px (1024 px at scale 2.0) untouched.
    """

    cam_forward: Callable[[np.ndarray], np.ndarray]
    aff_forward: Callable[[np.ndarray], np.ndarray]
    mean: Sequence[float]
    std: Sequence[float]
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    walk_params: WalkParams = REFERENCE_WALK
    classify: Callable[[np.ndarray], np.ndarray] | None = None  # (B,3,h,w) -> (B, C) logits
    walk: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    tile: int | None = TILE
    tile_margin: int = TILE_MARGIN

    def class_scores(self, img: np.ndarray) -> np.ndarray:
        """sigmoid(logit) of every foreground class for the whole image, (C,) float32."""
        if self.classify is None:
            raise PsaError("this backend cannot predict classes (no classifier output)")
        logits = self.classify(normalize_image(img, self.mean, self.std)[None])[0]
        return (1 / (1 + np.exp(-np.asarray(logits, np.float64)))).astype(np.float32)

    def predict_classes(
        self, img: np.ndarray, threshold: float | Sequence[float]
    ) -> tuple[int, ...]:
        """Classes whose score (``class_scores``) exceeds ``threshold`` (one, or one per class)."""
        return classes_above(self.class_scores(img), threshold)

    def features(self, img: np.ndarray, normalized: np.ndarray | None = None) -> np.ndarray:
        """Affinity features of the zero-padded (after normalising) image, (D, Hp/8, Wp/8).

        ``normalized``: ``normalize_image(img, mean, std)`` if the caller has it already.
        """
        if normalized is None:
            normalized = normalize_image(img, self.mean, self.std)
        x = pad_to_multiple(normalized, STRIDE, 0.0)
        f = forward_tiled(self.aff_forward, x, False, self.tile, self.tile_margin, "aff")
        return np.ascontiguousarray(f[0])

    def label(
        self,
        img: np.ndarray,
        classes: Sequence[int],
        cams: np.ndarray | None = None,
        crf: bool = False,
        times: dict[str, float] | None = None,
    ) -> np.ndarray:
        """(H, W, 3) uint8 RGB + foreground class ids → (H, W) uint8 label map.

        ``cams`` (K, H, W) may be given (e.g. from make-cam) to skip the CAM network. With no
        foreground class the result is all background. ``times``, if given, receives the
        seconds spent in each stage of ``STAGES`` that ran (added to what it holds).
        """
        h, w = img.shape[:2]
        keys = sorted(set(int(c) for c in classes))
        if not keys:
            return np.zeros((h, w), np.uint8)
        rw = self.walk_scores_at_stride(img, keys, cams, times)
        with _timed(times, "upsample"):
            scores = upsample_scores(rw, self.walk_params.stride)
        if crf:
            with _timed(times, "crf"):
                scores = crf_refine(img, scores, self.walk_params.crf_sxy)
        with _timed(times, "argmax"):
            return scores_to_label(scores, keys, (h, w))

    def walk_scores_at_stride(
        self,
        img: np.ndarray,
        keys: Sequence[int],
        cams: np.ndarray | None = None,
        times: dict[str, float] | None = None,
    ) -> np.ndarray:
        """The walked scores of ``[background; keys]`` on the walk's grid, (1 + K, h', w'):
        ``label`` before the upsampling, the CRF and the argmax (same arguments; ``keys``
        sorted, not empty)."""
        with _timed(times, "normalize"):
            x = normalize_image(img, self.mean, self.std)
        if cams is None:
            with _timed(times, "cam"):
                cams = multiscale_cam(
                    self.cam_forward,
                    img,
                    keys,
                    self.scales,
                    self.mean,
                    self.std,
                    self.flip,
                    self.tile,
                    self.tile_margin,
                    normalized=x,
                )
        with _timed(times, "features"):
            features = self.features(img, normalized=x)
        with _timed(times, "walk"):
            return walk_scores_at_stride(cams, features, self.walk_params, self.walk)


RECORDS = "labels.jsonl"


def label_record(
    sample: Sample,
    label: np.ndarray,
    classes: Sequence[int],
    class_names: Sequence[str] | None,
    scores: np.ndarray | None = None,
    **extra,
) -> dict:
    """What a script wants to know of one labeled image (one line of ``labels.jsonl``).

    ``id``, ``source`` (the image path, or None), ``size`` [H, W], ``classes`` — each present
    class with its ``name``, ``id``, whether it was ``given`` or ``predicted`` and, when the
    classifier ran, its ``score`` —, ``scores`` (every class, when predicted), ``pixels``
    (share of the label map per class name present, ``ignore`` for 255), then ``extra``
    (backend, walk, crf, seconds, …).
    """
    names = list(class_names) if class_names else [str(i) for i in range(256)]
    origin = "given" if sample.labels is not None else "predicted"
    entries = []
    for c in sorted(set(int(c) for c in classes)):
        e = {"name": names[c], "id": c, "source": origin}
        if scores is not None:
            e["score"] = round(float(scores[c - 1]), 4)
        entries.append(e)
    ids, counts = np.unique(label, return_counts=True)
    pixels = {
        ("ignore" if i == 255 else names[i]): round(int(n) / label.size, 4)
        for i, n in zip(ids.tolist(), counts.tolist(), strict=True)
    }
    record = {
        "id": sample.id,
        "source": str(Path(sample.image).resolve()) if sample.image is not None else None,
        "size": [int(label.shape[0]), int(label.shape[1])],
        "classes": entries,
    }
    if scores is not None:
        record["scores"] = {names[c + 1]: round(float(v), 4) for c, v in enumerate(scores)}
    return {**record, "pixels": pixels, **extra}


@dataclass(frozen=True)
class LabelResult:
    """One labeled image: ``label`` (H, W) uint8 class ids, ``record`` (``label_record``)."""

    label: np.ndarray
    record: dict


def label_image(
    labeler: Labeler,
    image,
    class_names: Sequence[str],
    classes: Sequence[str] | None = None,
    threshold: float | Sequence[float] = 0.5,
    crf: bool = False,
    info: dict | None = None,
) -> LabelResult:
    """Label one image given as a path, a PIL image or an (H, W, 3) uint8 array.

    ``classes`` are names from ``class_names`` (background first); None predicts them with
    ``threshold``. The API behind ``Bundle.label``.
    """
    from pathlib import Path

    from psa_infer.datasets import DataError, class_ids, load_image

    t0 = time.perf_counter()
    source = None
    if isinstance(image, (str, Path)):
        source, image = Path(image), load_image(image)
    elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        from psa_infer.datasets import pil_to_rgb

        image = pil_to_rgb(image)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
        raise DataError(f"image: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    names = tuple(class_names)
    ids = None if classes is None else class_ids(list(classes), names, "classes")
    scores = None
    if ids is None:
        scores = labeler.class_scores(image)
        ids = classes_above(scores, threshold)
    label = labeler.label(image, ids, crf=crf)
    sample = Sample(
        source.stem if source else "image", source, None, None if scores is not None else ids
    )
    extra = {**(info or {}), "crf": crf, "seconds": round(time.perf_counter() - t0, 4)}
    return LabelResult(label, label_record(sample, label, ids, names, scores, **extra))


class _Records:
    """``labels.jsonl``: a line appended per labeled image, compacted (last line per id wins,
    torn lines dropped) and rewritten atomically at the end, so a kill at any point and a re-run
    leave one record per image."""

    def __init__(self, path, order: Sequence[str] = ()) -> None:
        self.path = path
        self.order = {sid: k for k, sid in enumerate(order)}  # ids' rank in the final file
        self.rows: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the torn last line of a killed run
                if isinstance(row, dict) and isinstance(row.get("id"), str):
                    self.rows[row["id"]] = row
        self.file = None

    def add(self, row: dict) -> None:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("a", encoding="utf-8")
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.rows[row["id"]] = row

    def close(self) -> None:
        import os

        from psa_infer.palette import atomic_path

        if self.file is not None:
            self.file.close()
        if self.rows:
            # In the run's order of samples (any engine, any completion order), earlier rows
            # of ids not in this run after them as they were.
            ranked = sorted(
                enumerate(self.rows.values()),
                key=lambda kr: self.order.get(kr[1]["id"], len(self.order) + kr[0]),
            )
            tmp = atomic_path(self.path)
            tmp.write_text("".join(json.dumps(r) + "\n" for _, r in ranked), "utf-8")
            os.replace(tmp, self.path)


@dataclass(frozen=True)
class Labeled:
    """What labeling one sample produced, before anything is written: the label map and its
    ``labels.jsonl`` record, the overlay picture if one was asked for; ``label`` and ``record``
    are None when only a missing overlay was made (the label map existed)."""

    label: np.ndarray | None
    record: dict | None
    overlay: np.ndarray | None = None


@dataclass
class LabelJob:
    """Labeling as a run does it, split where the work can move: ``compute`` needs the Labeler
    (in this process, or in a Ray actor: ``psa_infer.ray_engine``), ``write`` the output folder
    (always the driving process). Both engines therefore write the same files.

    ``class_threshold``: one, or one per class, for samples whose classes are predicted;
    ``cam_dir``: CAMs from make-cam to reuse; ``info``: extra keys of every record (backend,
    walk); ``overlay``: also ``out_dir/overlays/<id>.jpg``; ``overwrite``: relabel what exists.
    """

    out_dir: Path
    crf: bool = False
    class_threshold: float | Sequence[float] = 0.5
    cam_dir: Path | None = None
    num_classes: int | None = None
    class_names: Sequence[str] | None = None
    info: dict | None = None
    overwrite: bool = False
    overlay: bool = False

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.overlay and not self.class_names:
            raise PsaError("overlays need the class names (class_names)")

    def label_path(self, s: Sample) -> Path:
        from psa_infer.datasets import output_path

        return output_path(self.out_dir, s.id, ".png")

    def overlay_path(self, s: Sample) -> Path:
        from psa_infer.datasets import output_path

        return output_path(self.out_dir / "overlays", s.id, ".jpg")

    def is_done(self, s: Sample) -> bool:
        if self.overwrite or not self.label_path(s).exists():
            return False
        return not self.overlay or self.overlay_path(s).exists()

    def compute(self, labeler: Labeler, s: Sample) -> Labeled:
        """Read, label and (with ``overlay``) draw one sample; raises DataError/ArtifactError
        about its own files."""
        from psa_infer.artifacts import load_cam
        from psa_infer.datasets import load_image
        from psa_infer.visualize import overlay

        t0 = time.perf_counter()
        img = load_image(s.image)
        names = list(self.class_names) if self.class_names else None
        done = self.label_path(s)
        if not self.overwrite and done.exists():  # labeled before, its overlay asked for now
            from psa_infer.palette import load_label_png

            return Labeled(None, None, overlay(img, load_label_png(done), names))
        classes, scores = s.labels, None
        if classes is None:
            scores = labeler.class_scores(img)
            classes = classes_above(scores, self.class_threshold)
        cams = None
        cam_file = Path(self.cam_dir) / f"{s.id}.npz" if self.cam_dir is not None else None
        if cam_file is not None and cam_file.exists():
            cams, keys = load_cam(cam_file, self.num_classes, img.shape[:2])
            if tuple(keys.tolist()) != tuple(sorted(classes)):
                cams = None  # saved for other classes: recompute
        label = labeler.label(img, classes, cams, self.crf)
        picture = overlay(img, label, names) if self.overlay else None
        seconds = round(time.perf_counter() - t0, 4)
        extra = {**(self.info or {}), "crf": self.crf, "seconds": seconds}
        return Labeled(label, label_record(s, label, classes, names, scores, **extra), picture)

    def write(self, s: Sample, result: Labeled, records: _Records, verbose: bool = False) -> None:
        """Write what ``compute`` made: overlay, record, then the label map (a map on disk
        always has its record, and a finished map marks the sample done)."""
        from tqdm import tqdm

        from psa_infer.palette import save_label_png
        from psa_infer.visualize import save_picture

        if result.overlay is not None:
            save_picture(self.overlay_path(s), result.overlay)
        if result.label is None:
            return
        records.add(result.record)
        save_label_png(self.label_path(s), result.label)
        if verbose:
            found = ", ".join(c["name"] for c in result.record["classes"]) or "background only"
            tqdm.write(f"{s.id}: {found} ({result.record['seconds']:.2f} s)", file=sys.stderr)


def shard_outputs(shard: tuple[int, int]) -> tuple[str, str]:
    """The records and failures file names of shard ``(i, n)``: processes sharing a folder
    never write the same file."""
    from psa_infer.runs import FAILURES

    i, n = shard
    if n == 1:
        return RECORDS, FAILURES
    return f"labels.{i}of{n}.jsonl", f"failures.{i}of{n}.jsonl"


def label_items(
    labeler: Labeler,
    items: Sequence[Sample],
    out_dir,
    crf: bool = False,
    class_threshold: float | Sequence[float] = 0.5,
    cam_dir=None,
    progress: bool = True,
    num_classes: int | None = None,
    shard: tuple[int, int] = (0, 1),
    fail_fast: bool = False,
    class_names: Sequence[str] | None = None,
    info: dict | None = None,
    overwrite: bool = False,
    overlay: bool = False,
    verbose: bool = False,
) -> dict:
    """Label every sample into ``out_dir/<id>.png``; images already written are skipped.

    ``Sample.labels`` None: the classes are predicted (``class_threshold``: one, or one per
    class). ``shard = (i, n)`` keeps every n-th item starting at i, so n processes never
    collide. An image that fails with an error about its files is listed in
    ``out_dir/failures.jsonl`` and the others go on (``psa_infer.runs``). Each labeled image
    gets a line in ``out_dir/labels.jsonl`` (``label_record``, plus ``info`` such as backend and
    walk); ``overlay`` also writes ``out_dir/overlays/<id>.jpg`` for people;
    ``overwrite`` relabels images already done. Returns counts (labeled, skipped, failed).
    """
    from psa_infer.runs import run_items

    job = LabelJob(
        Path(out_dir),
        crf,
        class_threshold,
        cam_dir,
        num_classes,
        class_names,
        info,
        overwrite,
        overlay,
    )
    i, n = shard
    mine = list(items)[i::n]
    records_name, failures_name = shard_outputs(shard)
    records = _Records(job.out_dir / records_name, order=[s.id for s in mine])
    overlays_only: list[str] = []

    def work(s: Sample) -> None:
        result = job.compute(labeler, s)
        if result.label is None:
            overlays_only.append(s.id)
        job.write(s, result, records, verbose)

    try:
        stats = run_items(
            mine,
            job.out_dir,
            job.is_done,
            work,
            desc="label",
            fail_fast=fail_fast,
            progress=progress,
            failures_name=failures_name,
        )
    finally:
        records.close()
    return finish_stats(stats, records, len(overlays_only))


def finish_stats(stats: dict, records: _Records, overlays_only: int) -> dict:
    """``run_items``' counts as a labeling run reports them."""
    stats["records_file"] = str(records.path) if records.rows else None
    labeled = stats.pop("done") - overlays_only
    return {"labeled": labeled, **stats, "overlays_added": overlays_only}
