"""``psa show``: a labels folder and what belongs with it (images, CAMs, ground truth, class
names) read into rows, drawn as one grid with ``psa_infer.visualize`` (torch-free)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psa_infer.errors import PsaError
from psa_infer.pipeline import RECORDS  # labels.jsonl (labels.<i>of<n>.jsonl per shard)
from psa_infer.visualize import cam_panel, classes_panel, fit_height, grid, paint_panel


def _read_records(labels_dir: Path) -> dict[str, dict]:
    """The labeler's records beside the label maps, id → record (``source``: the image path,
    ``classes``: [{"name", "id", …}]); a torn line (a killed run's last) is skipped."""
    out: dict[str, dict] = {}
    for path in sorted(labels_dir.glob("labels*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                out[rec["id"]] = rec
    return out


def _names_from_records(records: dict[str, dict]) -> tuple[str, ...] | None:
    """Class names by id from the records' present classes (ids never seen: 'class <id>')."""
    known: dict[int, str] = {}
    for rec in records.values():
        for c in rec.get("classes") or ():
            if (
                isinstance(c, dict)
                and isinstance(c.get("id"), int)
                and isinstance(c.get("name"), str)
            ):
                known[c["id"]] = c["name"]
    if not known:
        return None
    return ("background", *(known.get(i, f"class {i}") for i in range(1, max(known) + 1)))


@dataclass
class ShowRow:
    """One row of ``psa show``: an id and what was found for it."""

    id: str
    image: np.ndarray
    label: np.ndarray
    cam: np.ndarray | None = None
    truth: np.ndarray | None = None


@dataclass
class Shown:
    """What ``psa show`` draws: ``rows``, ``class_names`` (None: unknown), whether a ground
    truth column is wanted, and how many label maps the source has no image for (a data
    set's other splits, or the other maps when the source is one image)."""

    rows: list[ShowRow]
    class_names: tuple[str, ...] | None
    has_truth: bool
    not_in_source: int = 0


def show_rows(
    labels_dir: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    cam_dir: str | os.PathLike | None = None,
    truth_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    split: str = "val",
    ids: Sequence[str] | None = None,
    limit: int = 8,
) -> Shown:
    """Read the label maps of ``labels_dir`` (``ids``, else the first ``limit`` by id) and
    what belongs with them.

    Images come from ``images`` — a VOC data set (the label maps of its ``split`` are
    shown), a folder with a labels file, a folder of images (by file stem), one image (its
    label map only) — or else from the labels folder's ``labels.jsonl``. Ground truth comes
    from ``truth_dir`` or the data set's masks; names from ``classes``, else the data set,
    else ``labels.jsonl``. A label map without its image, or of another size than its image,
    is a one-line PsaError naming the file.
    """
    from psa_infer.artifacts import load_cam
    from psa_infer.datasets import is_labeled_set, list_images, load_image, open_dataset
    from psa_infer.palette import load_label_png

    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise PsaError(f"{labels_dir}: labels folder does not exist")
    found = {p.stem: p for p in sorted(labels_dir.glob("*.png")) if not p.name.startswith(".")}
    if not found:
        raise PsaError(f"{labels_dir}: no label maps (<id>.png) in this folder")
    for what, d in (("ground-truth", truth_dir), ("CAM", cam_dir)):
        if d is not None and not Path(d).is_dir():
            raise PsaError(f"{d}: {what} folder does not exist")

    records = _read_records(labels_dir)
    sources: dict[str, Path] = {}
    truths: dict = {}  # id → (data set, sample): ground truth through DataSet.ground_truth
    subset = False  # the source holds only some of the label maps' images, on purpose
    names = tuple(classes) if classes else None
    where = f"the records of {labels_dir} ({RECORDS})" if records else None
    if images is not None:
        src = Path(images)
        where = str(src)
        coco_file = src.is_file() and src.suffix.lower() == ".json"  # a COCO-format export
        if src.is_file() and not coco_file:
            sources, subset = {src.stem: src}, True
        elif not src.is_dir() and not coco_file:
            raise PsaError(f"{src}: no such image, folder or data set")
        elif coco_file or is_labeled_set(src):
            ds = open_dataset(src, classes=names)
            samples = ds.split(split)
            sources = {s.id: s.image for s in samples}
            truths = {s.id: (ds, s) for s in samples if ds.has_ground_truth(s)}
            names = names or ds.classes
            if ds.kind in ("voc", "coco"):
                where, subset = f"{src}, split '{split}' (--split)", True
        else:
            sources = list_images(src)
    else:
        for i, rec in records.items():
            if isinstance(rec.get("source"), str):
                sources[i] = Path(rec["source"])
    if names is None:
        names = _names_from_records(records)

    pool = sorted(found)
    if ids:
        missing = [i for i in ids if i not in found]
        if missing:
            raise PsaError(f"{labels_dir}: no label map for id '{missing[0]}' ({missing[0]}.png)")
        pool = list(ids)
    elif subset:
        pool = [i for i in pool if i in sources]
        if not pool:
            raise PsaError(
                f"{labels_dir}: none of its {len(found)} label maps is for an image of {where}"
            )
    rows = []
    for i in pool[:limit]:
        label = load_label_png(found[i])
        if i not in sources:
            if where is None:
                raise PsaError(
                    f"{found[i]}: where is its image? pass --images (a data set, a folder or "
                    f"an image); {labels_dir} has no {RECORDS}"
                )
            raise PsaError(f"{found[i]}: no image '{i}' in {where}")
        image = load_image(sources[i])
        size = image.shape[:2]
        _same_size(found[i], label, sources[i], size)
        row = ShowRow(i, image, label)
        if cam_dir is not None and (Path(cam_dir) / f"{i}.npz").exists():
            row.cam, _ = load_cam(Path(cam_dir) / f"{i}.npz", size=size)
        t = Path(truth_dir) / f"{i}.png" if truth_dir is not None else None
        if t is not None and t.exists():
            row.truth = load_label_png(t)
            _same_size(t, row.truth, sources[i], size)
        elif t is None and i in truths:
            ds, s = truths[i]
            row.truth = ds.ground_truth(s)
            _same_size(s.mask or f"{ds.root} ('{i}')", row.truth, sources[i], size)
        rows.append(row)
    has_truth = truth_dir is not None or bool(truths)
    return Shown(rows, names, has_truth, len(found) - len(pool) if not ids else 0)


def _same_size(path, label: np.ndarray, image_path, size) -> None:
    if label.shape != tuple(size):
        h, w = label.shape
        raise PsaError(
            f"{path}: label map is {w}x{h} but its image {image_path} is {size[1]}x{size[0]}"
        )


def show_grid(shown: Shown, height: int = 200) -> np.ndarray:
    """image | labels | CAM (when a row has one) | ground truth (when known) | classes."""
    has_cam = any(r.cam is not None for r in shown.rows)
    titles = ["image", "labels"] + ["CAM (max)"] * has_cam + ["ground truth"] * shown.has_truth
    out = []
    for r in shown.rows:
        panels = [fit_height(r.image, height), paint_panel(r.image, r.label, height)]
        if has_cam:
            panels.append(None if r.cam is None else cam_panel(r.image, r.cam, height))
        if shown.has_truth:
            panels.append(None if r.truth is None else paint_panel(r.image, r.truth, height))
        maps = [r.label] + ([r.truth] if r.truth is not None else [])
        panels.append(classes_panel(maps, shown.class_names, height, heading=r.id))
        out.append(panels)
    return grid(out, [*titles, "classes"], height)
