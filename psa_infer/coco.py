"""COCO-format data sets (torch-free): ``instances_*.json`` → samples with image-level labels,
and semantic ground truth for ``psa eval`` / ``psa show`` rendered with pycocotools.

Two layouts (``psa_infer.datasets.open_dataset`` detects them):

* **a COCO root** (2014, 2017, or a CVAT "COCO 1.0" export): ``annotations/instances_<split>.json``
  (or ``instances_<split>.json`` in the folder itself), images in ``<split>/``,
  ``images/<split>/``, ``images/`` or the folder itself. Splits are named after the files
  (``train2014``, ``val2014``, ``default``); ``train`` / ``val`` stand for the one split whose
  name starts with them; with a single file, ``all`` / ``train`` / ``val`` / ``test`` all
  mean it, as for a folder.
* **one COCO-format json** from an annotation tool, given with ``--labels FILE`` (or as the
  data path itself): images in the data folder, beside the json, or in an ``images/`` folder
  of either, found by each entry's ``file_name``. One split, as a folder has.

A split may also be a ``.txt`` list of image ids (as for VOC), looked up in every annotation
file of the root.

Classes are the categories sorted by id and numbered 1..K with their names (background 0), so
COCO's 80 categories with ids up to 90 become 1..80, and an export with ids 1..3 becomes 1..3.
An image's id is its ``file_name``'s stem (it names the output files: ``check_id``).

Decisions, each for a reason:

* **Crowd annotations count for the image-level labels**: a crowd of people is people in the
  image; leaving the class out would teach the classifier that it is absent. In the ground
  truth a crowd region is 255 (ignore) where no single instance covers it: its pixels are a
  mix of the class and whatever lies between the people.
* **Overlaps: larger instances are painted first**, so a smaller object on a larger one (a cup
  on a table) stays visible; equal areas go in file order. Areas are the rendered masks' pixel
  counts, not the files' ``area`` fields, which exports fill in unevenly.
* An annotation **without a mask** (no ``segmentation``, an empty list, or only polygons of
  fewer than 3 points: a detection export) counts for the labels and makes its ``bbox``
  ignore (255) in the ground truth: the object is there, its pixels are unknown.
* Images with no annotation stay in their split with no classes (all background, which is
  what COCO's exhaustive annotation of its 80 classes means). Published weakly-supervised COCO
  splits leave them out; pass such a list as a ``.txt`` split to match them.

Nothing is cached on disk: each file is parsed once per process, masks are rendered when asked.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psa_infer.datasets import DataError, DataSet, Sample, check_id, read_id_list

_SPLIT_FILE = re.compile(r"^instances_(.+)\.json$")
IGNORE = 255


def annotation_files(folder: Path) -> dict[str, Path]:
    """A COCO root's annotation files by split name: ``annotations/instances_<split>.json``,
    else ``instances_<split>.json`` in ``folder`` itself; empty when there are none."""
    for d in (folder / "annotations", folder):
        if d.is_dir():
            found = {
                m.group(1): p
                for p in sorted(d.iterdir())
                if (m := _SPLIT_FILE.match(p.name)) and p.is_file()
            }
            if found:
                return found
    return {}


def looks_like_coco(data: object) -> bool:
    """A parsed json that is meant as COCO (its missing parts are then errors), not a folder's
    ``{"image": ["cat", ...]}`` labels file: a COCO key whose value is not a list of names."""
    if not isinstance(data, dict):
        return False
    if "annotations" in data or "categories" in data:
        return True
    images = data.get("images")
    return isinstance(images, list) and any(isinstance(x, dict) for x in images)


@dataclass(frozen=True)
class _Image:
    """One image entry: where its file is, its size, and its annotations (index, dict)."""

    path: Path  # the annotation file
    where: str  # "<json>: images[i] ('<file_name>')", for messages
    file: Path
    height: int
    width: int
    anns: tuple[tuple[int, dict], ...]


@dataclass
class _File:
    """One parsed annotation file: its classes (background first) and images by sample id."""

    path: Path
    categories: tuple[tuple[object, str], ...]  # (id, name) sorted by id
    index: dict[object, int]  # category id → class id 1..K
    images: dict[str, _Image]
    samples: dict[str, Sample]  # by id, in the file's order

    @property
    def classes(self) -> tuple[str, ...]:
        return ("background", *(name for _, name in self.categories))


def read_json(path: Path) -> object:
    """A json file's content, or a one-line DataError naming it."""
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _categories(path: Path, cats: list) -> tuple[tuple[tuple[object, str], ...], dict]:
    seen_ids: dict[object, int] = {}
    seen_names: dict[str, int] = {}
    for n, c in enumerate(cats):
        if not (isinstance(c, dict) and isinstance(c.get("id"), (int, str))):
            raise DataError(f"{path}: categories[{n}]: expected {{'id': int, 'name': str}}")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}: categories[{n}] (id {c['id']}): expected a 'name'")
        if name == "background":
            raise DataError(
                f"{path}: categories[{n}]: 'background' is class 0, not a category; rename it"
            )
        for key, seen in ((c["id"], seen_ids), (name, seen_names)):
            if key in seen:
                raise DataError(f"{path}: categories[{n}]: {key!r} is also categories[{seen[key]}]")
            seen[key] = n
    if not cats:
        raise DataError(f"{path}: 'categories' is empty: no classes to label")
    try:
        ordered = sorted(cats, key=lambda c: c["id"])
    except TypeError:
        raise DataError(f"{path}: category ids mix numbers and strings") from None
    pairs = tuple((c["id"], c["name"]) for c in ordered)
    return pairs, {cid: k for k, (cid, _) in enumerate(pairs, 1)}


def _image_dir(path: Path, first: str, dirs: list[Path]) -> Path:
    for d in dirs:
        if (d / first).is_file():
            return d
    looked = ", ".join(str(d) for d in dirs)
    raise DataError(f"{path}: images[0] '{first}' is not in any of: {looked}")


def parse_file(path: Path, dirs: list[Path], data: object = None) -> _File:
    """Index one annotation file (``data``: its content, if already read); images are looked
    for in the first of ``dirs`` that holds the first image. Every entry is checked: a
    DataError names the file and the entry."""
    if data is None:
        data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO-format file (expected an object at the top)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: not a COCO-format file: no '{key}' list")
    categories, index = _categories(path, data["categories"])
    entries = data["images"]
    if not entries:
        raise DataError(f"{path}: 'images' is empty")
    first = entries[0].get("file_name") if isinstance(entries[0], dict) else None
    if not isinstance(first, str):
        raise DataError(f"{path}: images[0]: expected a 'file_name'")
    folder = _image_dir(path, first, dirs)

    info: dict[object, tuple[int, str, Path, int, int]] = {}  # coco id → entry
    stems: dict[str, int] = {}
    for n, im in enumerate(entries):
        if not isinstance(im, dict):
            raise DataError(f"{path}: images[{n}]: expected an object")
        name, iid = im.get("file_name"), im.get("id")
        where = f"{path}: images[{n}] ({name!r})"
        if not isinstance(name, str) or not name:
            raise DataError(f"{path}: images[{n}]: expected a 'file_name'")
        if not isinstance(iid, (int, str)) or isinstance(iid, bool):
            raise DataError(f"{where}: expected an 'id'")
        h, w = im.get("height"), im.get("width")
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise DataError(f"{where}: expected 'height' and 'width' > 0, got {h!r}, {w!r}")
        if iid in info:
            raise DataError(f"{where}: id {iid!r} is also images[{info[iid][0]}]")
        stem = check_id(Path(name).stem, where)
        if stem in stems:
            other = entries[stems[stem]]["file_name"]
            raise DataError(
                f"{where}: images[{stems[stem]}] ({other!r}) has the same name '{stem}'; "
                f"both would be labeled as '{stem}.png'"
            )
        stems[stem] = n
        file = folder / name
        if not file.is_file():
            raise DataError(f"{where}: no image file {file}")
        info[iid] = (n, stem, file, h, w)

    per_image: dict[object, list[tuple[int, dict]]] = {iid: [] for iid in info}
    for n, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise DataError(f"{path}: annotations[{n}]: expected an object")
        where = f"{path}: annotations[{n}] (id {a.get('id')!r})"
        iid, cid = a.get("image_id"), a.get("category_id")
        if not isinstance(iid, (int, str)) or iid not in per_image:
            raise DataError(f"{where}: image_id {iid!r} is not in 'images'")
        if not isinstance(cid, (int, str)) or cid not in index:
            raise DataError(f"{where}: category_id {cid!r} is not in 'categories'")
        if a.get("iscrowd", 0) not in (0, 1):
            raise DataError(f"{where}: 'iscrowd' must be 0 or 1, got {a['iscrowd']!r}")
        seg = a.get("segmentation")
        if seg is not None and not isinstance(seg, (list, dict)):
            raise DataError(f"{where}: 'segmentation': expected polygons or an RLE object")
        per_image[iid].append((n, a))

    images: dict[str, _Image] = {}
    samples: dict[str, Sample] = {}
    for iid, (n, stem, file, h, w) in info.items():
        anns = tuple(per_image[iid])
        where = f"{path}: images[{n}] ({entries[n]['file_name']!r})"
        images[stem] = _Image(path, where, file, h, w, anns)
        labels = tuple(sorted({index[a["category_id"]] for _, a in anns}))
        samples[stem] = Sample(stem, file, None, labels)
    return _File(path, categories, index, images, samples)


# --- ground truth --------------------------------------------------------------------------


def _rle_total(counts: str) -> int | None:
    """The pixels a compressed COCO RLE string spans (the sum of its runs), or None when it
    is malformed. The format (pycocotools' maskApi): each run is written as 5-bit groups, low
    first, one character each (48 + group; 0x20 set: another group follows; 0x10 set in the
    last group: negative), and every run after the third is stored as its difference from
    the run two before it. pycocotools decodes a string that spans too few pixels into
    uninitialised memory, so the length is checked here first."""
    runs: list[int] = []
    x = shift = 0
    for ch in counts:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        x |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            x -= 1 << shift
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
        x = shift = 0
    return None if shift else sum(runs)


def _rle(a: dict, h: int, w: int, where: str, mask_api) -> dict | None:
    """The annotation's mask as a pycocotools RLE, or None when it has none."""
    seg = a.get("segmentation")
    if not seg:
        return None
    if isinstance(seg, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        parts = []
        for k, poly in enumerate(seg):
            ok = isinstance(poly, list) and len(poly) % 2 == 0
            ok = ok and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in poly
            )
            if not ok:
                raise DataError(
                    f"{where}: segmentation[{k}]: expected a polygon [x1, y1, x2, y2, ...]"
                )
            if len(poly) >= 6:  # fewer than 3 points cover nothing (and 4 numbers would be
                parts.append([float(v) for v in poly])  # read by pycocotools as a box)
        if not parts:
            return None
        return mask_api.merge(mask_api.frPyObjects(parts, h, w))
    size, counts = seg.get("size"), seg.get("counts")
    if size != [h, w]:
        raise DataError(f"{where}: RLE 'size' {size!r} is not the image's [{h}, {w}]")
    if isinstance(counts, list):  # uncompressed RLE: run lengths, starting with 0s
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise DataError(f"{where}: RLE 'counts' must be run lengths summing to {h * w}")
        return mask_api.frPyObjects(seg, h, w)
    if not isinstance(counts, str) or _rle_total(counts) != h * w:
        raise DataError(f"{where}: RLE 'counts' is not a compressed RLE of {h}x{w} pixels")
    return {"size": [h, w], "counts": counts.encode("ascii")}


def _box(a: dict, h: int, w: int, where: str) -> np.ndarray | None:
    """The pixels of the annotation's ``bbox`` [x, y, width, height], or None without one."""
    box = a.get("bbox")
    if box is None:
        return None
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
    ):
        raise DataError(f"{where}: 'bbox': expected [x, y, width, height]")
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(w, math.ceil(box[0] + box[2])), min(h, math.ceil(box[1] + box[3]))
    region = np.zeros((h, w), bool)
    region[y0:y1, x0:x1] = True
    return region


def render_mask(image: _Image, index: dict) -> np.ndarray:
    """The semantic ground truth of one image, (H, W) uint8: 0 background, 1..K the classes
    (``index``: category id → class id), 255 crowd and mask-less regions no instance covers.
    Ignore regions first, then the instances from the largest to the smallest (module
    docstring)."""
    from pycocotools import mask as mask_api

    h, w = image.height, image.width
    out = np.zeros((h, w), np.uint8)
    instances = []
    for n, a in image.anns:
        where = f"{image.path}: annotations[{n}] (id {a.get('id')!r})"
        rle = _rle(a, h, w, where, mask_api)
        if rle is None:
            region = _box(a, h, w, where)
            if region is not None:
                out[region] = IGNORE
        elif a.get("iscrowd", 0):
            out[_decode(mask_api, rle)] = IGNORE
        else:
            instances.append((-float(mask_api.area(rle)), n, index[a["category_id"]], rle))
    for _, _, c, rle in sorted(instances, key=lambda t: t[:2]):
        out[_decode(mask_api, rle)] = c
    return out


def _decode(mask_api, rle: dict) -> np.ndarray:
    """pycocotools' decode as (H, W) bool, without the DeprecationWarning that pycocotools
    2.0.x raises under NumPy 2 on every call (its ``__array__`` has no ``copy`` keyword)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_api.decode(rle).astype(bool)


def _check_size(image: _Image) -> None:
    from PIL import Image

    try:
        with Image.open(image.file) as im:
            size = im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{image.file}: not a readable image ({e})") from None
    if size != (image.width, image.height):
        raise DataError(
            f"{image.where}: 'width' x 'height' {image.width}x{image.height} differ from the "
            f"file's {size[0]}x{size[1]}"
        )


# --- data sets -----------------------------------------------------------------------------


def _unique(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _coco_set(
    name: str,
    root: Path,
    files: dict[str, Callable[[], _File]],
    classes: tuple[str, ...],
    split_of: Callable[[str], str],
) -> DataSet:
    """A DataSet over annotation files (split name → a function that parses it once)."""
    parsed: dict[str, _File] = {}

    def get(split: str) -> _File:
        if split not in parsed:
            f = files[split]()
            if f.classes != classes:
                first = next(iter(parsed.values()), None)
                other = f" ({first.path}'s)" if first else ""
                raise DataError(
                    f"{f.path}: categories {list(f.classes[1:])} differ from "
                    f"{list(classes[1:])}{other}"
                )
            parsed[split] = f
        return parsed[split]

    def load(split: str) -> list[Sample]:
        p = Path(split)
        if p.suffix == ".txt":
            if not p.is_file():
                raise DataError(f"{p}: split list does not exist")
            found = [get(s) for s in files]
            out = []
            for i, where in read_id_list(p):
                hits = [f for f in found if i in f.images]
                if not hits:
                    names = ", ".join(str(f.path) for f in found)
                    raise DataError(f"{where}: image '{i}' is in none of {names}")
                if len(hits) > 1:
                    raise DataError(f"{where}: image '{i}' is in {hits[0].path} and {hits[1].path}")
                out.append(hits[0].samples[i])
            return out
        return list(get(split_of(split)).samples.values())

    def truth(sample: Sample) -> np.ndarray:
        for f in parsed.values():
            image = f.images.get(sample.id)
            if image is not None and image.file == Path(sample.image):
                _check_size(image)
                return render_mask(image, f.index)
        raise DataError(f"{root}: '{sample.id}' is not an image of its annotation files")

    return DataSet(name, root, classes, "coco", _loader=load, _truth=truth)


def open_coco_root(root: Path, files: dict[str, Path]) -> DataSet:
    """A COCO root with ``files`` (``annotation_files``): one split per file."""

    def parser(split: str, path: Path) -> Callable[[], _File]:
        dirs = [root / split, root / "images" / split, root / "images", root]
        return lambda: parse_file(path, [d for d in dirs if d.is_dir()] or [root])

    parsers = {s: parser(s, p) for s, p in files.items()}

    def split_of(split: str) -> str:
        if split in files:
            return split
        if len(files) == 1 and split in ("all", "train", "val", "test"):
            return next(iter(files))
        starts = [s for s in files if s.startswith(split)] if split in ("train", "val") else []
        if len(starts) == 1:
            return starts[0]
        known = ", ".join(files)
        if len(starts) > 1:
            raise DataError(f"{root}: split '{split}' could be any of {', '.join(starts)}")
        raise DataError(f"{root}: no split '{split}' (annotation files for: {known})")

    # The classes come from the smallest file: every file of a root must share them, and
    # the largest (train2014: ~450 MB) is parsed only when its split is asked for.
    smallest = min(files, key=lambda s: files[s].stat().st_size)
    first = parsers[smallest]()
    parsers[smallest] = lambda: first
    return _coco_set(root.name, root, parsers, first.classes, split_of)


def open_coco_file(path: Path, folder: Path | None = None, data: object = None) -> DataSet:
    """One COCO-format json (``data``: its content, if already read); its images in
    ``folder`` (the data path given with it), beside the json, or in an ``images/`` folder of
    either. Its one split answers to ``all``, ``train``, ``val``, ``test`` and its own name."""
    dirs = [folder, folder / "images"] if folder is not None else []
    dirs = _unique([*dirs, path.parent, path.parent / "images"])
    f = parse_file(path, [d for d in dirs if d.is_dir()], data)
    m = _SPLIT_FILE.match(path.name)
    own = m.group(1) if m else path.stem

    def split_of(split: str) -> str:
        if split in ("all", "train", "val", "test", own):
            return own
        raise DataError(f"{path}: no split '{split}' (one COCO file is one split: all)")

    name = (folder or path.parent).name
    return _coco_set(name, path, {own: lambda: f}, f.classes, split_of)
