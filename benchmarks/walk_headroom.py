"""Where the random walk loses: the walk on AffinityNet's affinities against walks on affinities
read from the masks, on a finished run (``psa demo`` / ``psa pipeline`` on data with masks).

    python -m benchmarks.walk_headroom RUN [--split val] [--limit N] [--out FILE.json]
                                           [--picture FILE.png]

Every row walks the same seeds (the run's CAMs with the walk's background, its walk settings)
and changes only the pair weights the walk moves scores along:

- ``AffinityNet``: the run's walk (its bundle's aff.onnx on ONNX Runtime), ``a ** beta``,
  computed as the runtime computes it.
- ``edges cut``: the same weights times the mask's (``mask_affinity``: the share of a label the
  pair's two cells have in common): a pair across an object's edge carries nothing. What the walk
  would gain if AffinityNet never let scores leak out of (or into) an object.
- ``insides joined``: the larger of the same weight and the mask's: a pair inside one region
  carries full weight. What it would gain if scores mixed freely inside each object.
- ``mask affinities``: the mask's weights alone, the best these seeds can give with a perfect
  AffinityNet at the walk's stride.

The shares go through the walk's ``beta`` as AffinityNet's affinities do, so a cell that
straddles an edge (half one label, half another: 0.5 ** 16) passes next to nothing on.

Beside each mIoU, the share of foreground pixels labeled background, of background pixels
labeled foreground, and of foreground pixels given another present class. Uses the masks of
the split; nothing here is a recipe setting, and a recipe must not be chosen by it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from psa_infer.cam import STRIDE, cam_prediction
from psa_infer.metrics import confusion, scores
from psa_infer.ops import avg_pool, pad_to_multiple, resize_bilinear
from psa_infer.pipeline import (
    WalkParams,
    peak_normalize,
    scores_to_label,
    upsample_scores,
    walk_seeds,
)

# _from_region: one definition of the pair sets (as psa_train.afflabels)
from psa_infer.randomwalk import _from_region, pair_affinity, pair_offsets, random_walk

IGNORE = 255
VARIANTS = ("AffinityNet", "edges cut", "insides joined", "mask affinities")


def mask_shares(mask: np.ndarray, num_labels: int, stride: int = STRIDE) -> np.ndarray:
    """Each cell's share of every label on the walk's grid, (L, Hp/s, Wp/s) float32 for the
    mask zero-padded to a multiple of 8 (as the walk's seeds, ``walk_seeds``).

    Ignored pixels (255) and the zero padding count for no label, so the shares of a cell
    sum to the fraction of its pixels that have one.
    """
    known = mask != IGNORE
    onehot = np.zeros((num_labels, *mask.shape), np.float32)
    ys, xs = np.nonzero(known)
    onehot[mask[known].astype(np.int64), ys, xs] = 1.0
    return avg_pool(pad_to_multiple(onehot, STRIDE, 0.0), stride)


def mask_affinity(shares: np.ndarray, radius: int = 5, pairs: str = "full") -> np.ndarray:
    """Pair weights from cell shares: ``sum_l min(p_l(i), p_l(j))`` for every pair of the walk's
    half-disk, (K, h, w) float32 as ``pair_affinity`` (0 where the pair does not exist).

    1 for two cells wholly of one label, 0 for cells with no label in common.
    """
    _, h, w = shares.shape
    out = np.zeros((len(pair_offsets(radius)), h, w), np.float32)
    for k, (dy, dx) in enumerate(pair_offsets(radius)):
        y0, y1, x0, x1 = _from_region(int(dy), int(dx), h, w, radius, pairs)
        if y1 <= y0 or x1 <= x0:
            continue
        a = shares[:, y0:y1, x0:x1]
        b = shares[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        out[k, y0:y1, x0:x1] = np.minimum(a, b).sum(axis=0)
    return out


def variant_weights(learned: np.ndarray, from_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The pair affinities of each row of ``VARIANTS``, before the walk raises them to beta
    (a product and a maximum of the raw values are those of the powered ones)."""
    return {
        "AffinityNet": learned,
        "edges cut": learned * from_mask,
        "insides joined": np.maximum(learned, from_mask),
        "mask affinities": from_mask,
    }


def walk_labels(
    v: np.ndarray, keys, weights: np.ndarray, params: WalkParams, size: tuple[int, int]
) -> np.ndarray:
    """The label map the walk from seeds ``v`` gives with these pair affinities, raised to
    ``params.beta`` inside the walk as the runtime does (in float64: powering them here in
    float32 first flipped argmax ties against the run's own labels at beta 24)."""
    walked = random_walk(v, weights.astype(np.float32), params.beta, params.steps, params.radius)
    if params.normalize:
        walked = peak_normalize(walked)
    return scores_to_label(upsample_scores(walked, params.stride), keys, size)


def error_shares(conf: np.ndarray) -> dict[str, float]:
    """% of foreground pixels labeled background, of background labeled foreground, and of
    foreground given another class, from a confusion matrix (rows: truth)."""
    fg = max(int(conf[1:].sum()), 1)
    bg = max(int(conf[0].sum()), 1)
    wrong = conf[1:, 1:].sum() - np.trace(conf[1:, 1:])
    return {
        "fg_to_bg": round(100 * conf[1:, 0].sum() / fg, 2),
        "bg_to_fg": round(100 * conf[0, 1:].sum() / bg, 2),
        "wrong_class": round(100 * wrong / fg, 2),
    }


PANEL_HEIGHT = 160


def _picture_row(img: np.ndarray, maps: list[np.ndarray], classes, heading: str) -> list:
    """One row of the picture: the image, each label map painted on it, the classes shown."""
    from psa_infer.visualize import classes_panel, fit_height, paint_panel

    panels = [fit_height(img, PANEL_HEIGHT)] + [paint_panel(img, m, PANEL_HEIGHT) for m in maps]
    return [*panels, classes_panel(maps, classes, PANEL_HEIGHT, heading=heading)]


def headroom(
    run: Path,
    split: str = "val",
    limit: int | None = None,
    progress: bool = True,
    picture: Path | None = None,
    rows: int = 6,
) -> dict:
    """mIoU and error shares of the CAM and of every walk of ``VARIANTS`` on ``split``.

    ``picture``: also draw the first ``rows`` images, each as image | truth | CAM | one panel
    per variant (``psa show``'s panels), so a person sees where the walk stops.
    """
    from tqdm import tqdm

    from psa_infer.artifacts import load_cam
    from psa_infer.bundle import open_bundle, walk_params
    from psa_infer.datasets import load_image, open_dataset
    from psa_infer.errors import PsaError

    # psa pipeline records where the data set is (psa demo's: "data", inside the run)
    recorded = run / "pipeline.json"
    data = json.loads(recorded.read_text())["data"] if recorded.exists() else "data"
    ds = open_dataset(run / data)
    items = [s for s in ds.split(split) if ds.has_ground_truth(s)][:limit]
    if not items:
        raise PsaError(f"{run / data}: no image of split {split!r} has a mask")
    n = ds.num_classes + 1  # labels, background included
    conf = {k: np.zeros((n, n), np.int64) for k in ("CAM", *VARIANTS)}
    bg_threshold = json.loads((run / "eval_cam.json").read_text())["default"]["bg_threshold"]
    drawn: list[list[np.ndarray]] = []
    with open_bundle(run / "bundle", walk="numpy") as bundle:
        params = walk_params(bundle.meta)
        for s in tqdm(items, desc="headroom", disable=not progress):
            img = load_image(s.image)
            gt = ds.ground_truth(s)
            size = gt.shape
            cams, keys = load_cam(run / "cams" / f"{s.id}.npz", n - 1, size)
            cam_label = cam_prediction(cams, keys, bg_threshold)
            conf["CAM"] += confusion(gt, cam_label, n)
            v = walk_seeds(cams, params.alpha, params.stride)
            features = bundle.labeler.features(img)
            if params.stride != STRIDE:  # on the walk's grid, as the run's walk reads them
                features = resize_bilinear(features, v.shape[1:])
            learned = pair_affinity(features, params.radius, params.pairs)
            shares = mask_shares(gt, n, params.stride)
            from_mask = mask_affinity(shares, params.radius, params.pairs)
            maps = [gt, cam_label]
            for name, weights in variant_weights(learned, from_mask).items():
                maps.append(walk_labels(v, keys, weights, params, size))
                conf[name] += confusion(gt, maps[-1], n)
            if picture is not None and len(drawn) < rows:
                drawn.append(_picture_row(img, maps, ds.classes, s.id))
    if picture is not None:
        from psa_infer.visualize import grid, save_picture

        heads = ["image", "ground truth", "CAM", *VARIANTS, "classes"]
        save_picture(picture, grid(drawn, heads, PANEL_HEIGHT))
    table = {k: {"miou": round(scores(c)["miou"], 2), **error_shares(c)} for k, c in conf.items()}
    return {"run": str(run), "split": split, "images": len(items), "rows": table}


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a psa demo / psa pipeline output folder")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=_positive, default=None, help="first N images of the split")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    p.add_argument(
        "--picture", type=Path, default=None, help="draw the first images' maps (PNG/JPEG)"
    )
    a = p.parse_args(argv)
    from psa_infer.errors import PsaError

    try:
        result = headroom(a.run, a.split, a.limit, picture=a.picture)
    except (PsaError, OSError) as e:
        raise SystemExit(f"walk_headroom: {e}") from None
    print(f"{result['run']} ({result['split']}, {result['images']} images)")
    print(f"{'weights':<16} {'mIoU':>6} {'fg→bg %':>8} {'bg→fg %':>8} {'wrong class %':>14}")
    for name, r in result["rows"].items():
        print(
            f"{name:<16} {r['miou']:>6.2f} {r['fg_to_bg']:>8.2f} {r['bg_to_fg']:>8.2f} "
            f"{r['wrong_class']:>14.2f}"
        )
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
