"""Data-set readers (torch-free): which images exist, their image-level labels, their masks.

Three layouts are read:

* **VOC** — ``VOCdevkit/VOC2012`` (or its parent, or any folder with the same layout, such as
  the synthetic benchmark): ``JPEGImages/<id>.jpg``, split lists in ``ImageSets/Segmentation``
  (or ``ImageSets/SegmentationAug``, ``ImageSets/Main``), masks in ``SegmentationClass`` or
  ``SegmentationClassAug``. Image-level labels come from ``image_labels.json`` when present,
  else from the mask, else from ``Annotations/<id>.xml``. Class names come from
  ``psa_dataset.json`` when present, else they are VOC's 20 classes.
* **folder** — any folder of images plus a labels file, CSV (``image,labels`` with labels
  separated by ``;`` or spaces) or JSON (``{"image": ["cat", "sofa"], ...}`` or
  ``{"classes": [...], "labels": {...}}``).
* a single image (for ``psa label``), with labels from the command line.

Class ids: 0 is background, 1..K the foreground classes in the order of ``classes[1:]``.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """A data set on disk is not what was expected; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One image: its id, where it lives, its mask (if any) and its foreground class ids."""

    id: str
    image: Path
    mask: Path | None
    labels: tuple[int, ...]  # sorted foreground class ids in 1..K


@dataclass
class DataSet:
    """A readable data set: class names (background first) and samples per split."""

    name: str
    root: Path
    classes: tuple[str, ...]
    kind: str
    _splits: dict[str, list[Sample]] = field(default_factory=dict, repr=False)
    _loader: object = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        """Foreground classes (background excluded)."""
        return len(self.classes) - 1

    def split(self, name: str) -> list[Sample]:
        """The samples of a split (e.g. ``train``, ``val``), or of a list file given by path."""
        if name not in self._splits:
            self._splits[name] = self._loader(name)  # type: ignore[operator]
        samples = self._splits[name]
        if not samples:
            raise DataError(f"{self.root}: split '{name}' is empty")
        return samples


def class_ids(names: list[str] | tuple[str, ...], classes: tuple[str, ...], where: str) -> tuple:
    """Map class names to ids 1..K; an unknown name is an error that names ``where``."""
    index = {c: i for i, c in enumerate(classes)}
    ids = set()
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n not in index or index[n] == 0:
            known = ", ".join(classes[1:])
            raise DataError(f"{where}: unknown class '{n}' (known: {known})")
        ids.add(index[n])
    return tuple(sorted(ids))


def open_dataset(root: str | Path, labels_file: str | Path | None = None) -> DataSet:
    """Open a data set, detecting its layout (VOC-like or folder + labels file)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    if root.is_file():
        raise DataError(f"{root}: expected a data-set folder, got a file")
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return _open_voc(cand, labels_file)
    return _open_folder(root, labels_file)


# --- VOC layout ---------------------------------------------------------------------------


def _open_voc(root: Path, labels_file: str | Path | None) -> DataSet:
    meta_path = root / "psa_dataset.json"
    name = "voc2012"
    classes: tuple[str, ...] = VOC_CLASSES
    if meta_path.exists():
        meta = _read_json(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
            raise DataError(f"{meta_path}: expected an object with a 'classes' list")
        classes = tuple(str(c) for c in meta["classes"])
        name = str(meta.get("name", root.name))
        if len(classes) < 2 or classes[0] != "background":
            raise DataError(f"{meta_path}: 'classes' must start with 'background'")
    labels_path = Path(labels_file) if labels_file else root / "image_labels.json"
    given: dict[str, tuple[int, ...]] | None = None
    if labels_file or labels_path.exists():
        given = _read_labels_file(labels_path, classes)

    def load(split: str) -> list[Sample]:
        list_path = _find_split_list(root, split)
        ids = [ln.split()[0] for ln in list_path.read_text().splitlines() if ln.strip()]
        samples = []
        for i in ids:
            image = root / "JPEGImages" / f"{i}.jpg"
            if not image.exists():
                raise DataError(f"{list_path}: image '{i}' not found at {image}")
            mask = None
            for d in ("SegmentationClass", "SegmentationClassAug"):
                if (root / d / f"{i}.png").exists():
                    mask = root / d / f"{i}.png"
                    break
            if given is not None:
                if i not in given:
                    raise DataError(f"{labels_path}: no image-level labels for '{i}'")
                labels = given[i]
            elif mask is not None:
                labels = _labels_from_mask(mask, len(classes))
            elif (root / "Annotations" / f"{i}.xml").exists():
                labels = _labels_from_xml(root / "Annotations" / f"{i}.xml", classes)
            else:
                raise DataError(f"{root}: no mask, annotation or labels file for image '{i}'")
            samples.append(Sample(i, image, mask, labels))
        return samples

    return DataSet(name, root, classes, "voc", _loader=load)


def _find_split_list(root: Path, split: str) -> Path:
    p = Path(split)
    if p.suffix == ".txt" and p.exists():
        return p
    for sub in ("Segmentation", "SegmentationAug", "Main"):
        cand = root / "ImageSets" / sub / f"{split}.txt"
        if cand.exists():
            return cand
    raise DataError(f"{root}: no split list '{split}' (looked in ImageSets/Segmentation, ...)")


def _labels_from_mask(mask: Path, num_labels: int) -> tuple[int, ...]:
    import numpy as np

    from psa_infer.palette import load_label_png

    m = load_label_png(mask)
    vals = np.unique(m)
    bad = vals[(vals >= num_labels) & (vals != 255)]
    if bad.size:
        raise DataError(
            f"{mask}: class id {int(bad[0])} outside 0..{num_labels - 1} (255 = ignore)"
        )
    return tuple(int(v) for v in vals if 0 < v < num_labels)


def _labels_from_xml(path: Path, classes: tuple[str, ...]) -> tuple[int, ...]:
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DataError(f"{path}: not a readable VOC annotation ({e})") from None
    names = [o.findtext("name") or "" for o in tree.getroot().iter("object")]
    return class_ids(names, classes, str(path))


# --- folder + labels file ------------------------------------------------------------------


def _open_folder(root: Path, labels_file: str | Path | None) -> DataSet:
    if labels_file is None:
        for cand in ("labels.json", "labels.csv", "image_labels.json"):
            if (root / cand).exists():
                labels_file = root / cand
                break
        else:
            raise DataError(
                f"{root}: neither a VOC layout (JPEGImages/) nor a folder with a labels file "
                "(labels.json or labels.csv); pass --labels FILE"
            )
    labels_path = Path(labels_file)
    raw, classes = _read_raw_labels(labels_path)
    if classes is None:
        classes = ("background", *sorted({n for names in raw.values() for n in names}))
    images = {p.stem: p for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    samples = []
    for key, names in raw.items():
        stem = Path(key).stem
        if stem not in images:
            raise DataError(f"{labels_path}: image '{key}' not found in {root}")
        ids = class_ids(names, classes, f"{labels_path} ('{key}')")
        samples.append(Sample(stem, images[stem], None, ids))

    def load(split: str) -> list[Sample]:
        if split in ("all", "train", "val", "test"):
            return samples
        list_path = Path(split)
        if not list_path.exists():
            raise DataError(f"{root}: no split '{split}' (a folder has one split: all)")
        keep = {ln.split()[0] for ln in list_path.read_text().splitlines() if ln.strip()}
        return [s for s in samples if s.id in keep]

    return DataSet(root.name, root, classes, "folder", _loader=load)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None


def _read_raw_labels(path: Path) -> tuple[dict[str, list[str]], tuple[str, ...] | None]:
    """Image key -> class names, plus the class list when the file gives one."""
    if not path.exists():
        raise DataError(f"{path}: labels file does not exist")
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        classes = None
        if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], dict):
            if "classes" in data:
                classes = tuple(str(c) for c in data["classes"])
                if not classes or classes[0] != "background":
                    classes = ("background", *classes)
            data = data["labels"]
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f'{path}: expected {{"image": ["class", ...], ...}}')
        return {str(k): [str(n) for n in v] for k, v in data.items()}, classes
    if path.suffix.lower() == ".csv":
        out: dict[str, list[str]] = {}
        with path.open(newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or (n == 1 and row[0].strip().lower() in ("image", "id", "file")):
                    continue
                names = [x for cell in row[1:] for x in cell.replace(";", " ").split()]
                out[row[0].strip()] = names
        return out, None
    raise DataError(f"{path}: labels file must be .json or .csv")


def _read_labels_file(path: Path, classes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    raw, _ = _read_raw_labels(path)
    return {Path(k).stem: class_ids(v, classes, f"{path} ('{k}')") for k, v in raw.items()}


def load_image(path: str | Path):
    """Read an image as (H, W, 3) uint8 RGB; a missing or corrupt file is a DataError."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
