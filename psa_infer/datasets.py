"""Data-set readers (torch-free): which images exist, their image-level labels, their masks.

Four layouts are read:

* **VOC** — ``VOCdevkit/VOC2012`` (or its parent, or any folder with the same layout, such as
  the synthetic benchmark): ``JPEGImages/<id>.jpg``, split lists in ``ImageSets/Segmentation``
  (or ``ImageSets/SegmentationAug``, ``ImageSets/Main``), masks in ``SegmentationClass`` or
  ``SegmentationClassAug``. Image-level labels come from ``image_labels.json`` when present,
  else from the mask, else from ``Annotations/<id>.xml``. Class names come from
  ``psa_dataset.json`` when present, else they are VOC's 20 classes.
* **folder** — any folder of images plus a labels file, CSV (``image,labels`` with labels
  separated by ``;`` or spaces) or JSON (``{"image": ["cat", "sofa"], ...}`` or
  ``{"classes": [...], "labels": {...}}``).
* **COCO** — ``annotations/instances_<split>.json`` (COCO 2014/2017, CVAT exports), or any
  COCO-format json given with ``--labels`` or as the data path: ``psa_infer.coco``.
* a single image (for ``psa label``), with labels from the command line.

Class ids: 0 is background, 1..K the foreground classes in the order of ``classes[1:]``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from psa_infer.errors import PsaError

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

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class DataError(PsaError):
    """A data set on disk is not what was expected; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One image: its id (the output files' name), where it lives, its mask (if any) and its
    foreground class ids (sorted, in 1..K; ``None`` = not given, to be predicted)."""

    id: str
    image: Path
    mask: Path | None = None
    labels: tuple[int, ...] | None = None


# Characters an id may not hold: path separators and control characters (an id names files).
_BAD_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_id(image_id: str, where: str) -> str:
    """An image id that names a file inside an output folder, or a DataError naming ``where``.

    Ids come from split lists, labels files and file names; they become ``<out>/<id>.png``. An
    id with a path separator, ``..``, a leading dot (hidden, and our temporary files' prefix)
    or a control character could name a path outside the folder, so it is refused.
    """
    if not image_id or _BAD_ID.search(image_id) or image_id.startswith(".") or ":" in image_id:
        raise DataError(
            f"{where}: id {image_id!r} is not a plain file name (no '/', '\\', ':', leading "
            "'.', or control characters): ids name output files"
        )
    if len(image_id.encode()) > 200:
        raise DataError(f"{where}: id {image_id[:40]!r}… is longer than 200 bytes")
    return image_id


def output_path(out_dir: str | Path, image_id: str, suffix: str) -> Path:
    """``out_dir/<id><suffix>``, refusing an id that would leave ``out_dir`` (``check_id``)."""
    return Path(out_dir) / f"{check_id(image_id, str(out_dir))}{suffix}"


@dataclass
class DataSet:
    """A readable data set: class names (background first) and samples per split."""

    name: str
    root: Path
    classes: tuple[str, ...]
    kind: str
    _splits: dict[str, list[Sample]] = field(default_factory=dict, repr=False)
    _loader: object = field(default=None, repr=False)
    # Sample -> (H, W) uint8 ground truth, for sets without mask files (COCO renders its
    # annotations); None: the sample's mask PNG.
    _truth: object = field(default=None, repr=False)

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

    def has_ground_truth(self, sample: Sample) -> bool:
        """Whether ``ground_truth(sample)`` has something to read (a mask PNG, annotations)."""
        return self._truth is not None or sample.mask is not None

    def ground_truth(self, sample: Sample):
        """The sample's ground truth, (H, W) uint8 class ids in 0..K, 255 = ignore: its mask
        PNG (VOC), or its annotations rendered (COCO). The one source of ground truth for
        ``psa eval`` and ``psa show``; a DataError names the file when there is none or an id
        is out of range."""
        import numpy as np

        from psa_infer.palette import load_label_png

        if self._truth is not None:
            return self._truth(sample)  # type: ignore[operator]
        if sample.mask is None:
            raise DataError(f"{self.root}: no ground-truth mask for '{sample.id}'")
        gt = load_label_png(sample.mask)
        n = len(self.classes)
        bad = np.unique(gt[(gt >= n) & (gt != 255)])
        if bad.size:
            raise DataError(
                f"{sample.mask}: ground-truth class id {int(bad[0])} outside 0..{n - 1} "
                "(255 = ignore)"
            )
        return gt


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


def open_dataset(
    root: str | Path,
    labels_file: str | Path | None = None,
    classes: tuple[str, ...] | None = None,
) -> DataSet:
    """Open a data set, detecting its layout (VOC-like, COCO, or folder + labels file).

    ``root`` may also be a COCO-format json. ``labels_file`` of a folder: a labels file, or a
    COCO-format json (told apart by its content). ``classes`` (a model's names, background
    first): a folder's labels file without a class list is read against them (an unknown name
    is an error naming it) instead of its own sorted names.
    """
    from psa_infer import coco

    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    if root.is_file():
        if root.suffix.lower() == ".json":
            return coco.open_coco_file(root)
        raise DataError(f"{root}: expected a data-set folder, got a file")
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return _open_voc(cand, labels_file)
    if labels_file is not None and Path(labels_file).suffix.lower() == ".json":
        data = coco.read_json(Path(labels_file)) if Path(labels_file).is_file() else None
        if coco.looks_like_coco(data):
            return coco.open_coco_file(Path(labels_file), root, data)
    elif labels_file is None and (files := coco.annotation_files(root)):
        return coco.open_coco_root(root, files)
    return _open_folder(root, labels_file, tuple(classes) if classes else None)


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
        samples = []
        for i, where in read_id_list(list_path):
            image = root / "JPEGImages" / f"{i}.jpg"
            if not image.exists():
                raise DataError(f"{where}: image '{i}' not found at {image}")
            mask = None
            for d in ("SegmentationClass", "SegmentationClassAug"):
                if (root / d / f"{i}.png").exists():
                    mask = root / d / f"{i}.png"
                    break
            if given is not None:
                if i not in given:
                    raise DataError(f"{labels_path}: no image-level labels for '{i}' ({where})")
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


def read_id_list(path: Path) -> list[tuple[str, str]]:
    """The ids of a split list, each with ``"<file>:<line>"`` for messages.

    A line is an id (``2007_000032``), optionally followed by other columns, or the DeepLab /
    SBD form ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``. Every id is
    checked (``check_id``) and may appear once.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file of image ids ({e.reason})") from None
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        first = line.split()[0]
        where = f"{path}:{n}"
        if "JPEGImages/" in first and first.lower().endswith(IMAGE_SUFFIXES):
            first = first.rsplit("/", 1)[1].rsplit(".", 1)[0]
        check_id(first, where)
        if first in seen:
            raise DataError(f"{where}: id '{first}' is listed twice (first on line {seen[first]})")
        seen[first] = n
        out.append((first, where))
    return out


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


def list_images(folder: Path) -> dict[str, Path]:
    """The images directly in ``folder`` by id (file stem); two files of one stem are an error.

    Hidden files (leading '.') are not images of the set (editors' and our temporary files).
    """
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem in found:
            raise DataError(
                f"{folder}: '{found[p.stem].name}' and '{p.name}' would both be labeled as "
                f"'{p.stem}.png'; rename one of them"
            )
        found[check_id(p.stem, str(p))] = p
    return found


def _open_folder(
    root: Path, labels_file: str | Path | None, known: tuple[str, ...] | None
) -> DataSet:
    if labels_file is None:
        for cand in LABELS_FILES:
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
    if classes is not None and known is not None and list(classes) != list(known):
        raise DataError(
            f"{labels_path}: 'classes' {list(classes[1:])} differ from the model's "
            f"{list(known[1:])}"
        )
    if classes is None:
        # Names are matched against the model's classes when there is one; a training set
        # without a class list takes the sorted names it uses.
        classes = known or ("background", *sorted({n for _, ns in raw.values() for n in ns}))
    images = list_images(root)
    samples = []
    for key, (where, names) in raw.items():
        if key not in images:
            raise DataError(f"{where}: image '{key}' not found in {root}")
        ids = class_ids(names, classes, f"{where} ('{key}')")
        samples.append(Sample(key, images[key], None, ids))

    def load(split: str) -> list[Sample]:
        if split in ("all", "train", "val", "test"):
            return samples
        list_path = Path(split)
        if not list_path.exists():
            raise DataError(f"{root}: no split '{split}' (a folder has one split: all)")
        keep = {i for i, _ in read_id_list(list_path)}
        return [s for s in samples if s.id in keep]

    return DataSet(root.name, root, classes, "folder", _loader=load)


def _read_json(path: Path, pairs_hook=None):
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=pairs_hook)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None


def _image_key(key: str, where: str) -> str:
    """A labels file's image key (``a.jpg`` or ``a``) → the image id ``a``."""
    if "/" in key or "\\" in key:
        raise DataError(f"{where}: image {key!r}: expected a file name in the folder, not a path")
    stem = key.rsplit(".", 1)[0] if key.lower().endswith(IMAGE_SUFFIXES) else key
    return check_id(stem, where)


def _read_raw_labels(path: Path) -> tuple[dict[str, tuple[str, list[str]]], tuple | None]:
    """Image id -> (where it is given, class names), plus the class list the file gives.

    Two entries for one image (a repeated CSV row or JSON key, ``a.jpg`` beside ``a``) are an
    error naming both: which one was meant cannot be guessed.
    """
    if not path.is_file():
        raise DataError(f"{path}: labels file does not exist")
    out: dict[str, tuple[str, list[str]]] = {}

    def add(key: str, names: list[str], where: str) -> None:
        image_id = _image_key(key, where)
        if image_id in out:
            raise DataError(f"{where}: image '{key}' is labeled twice (also at {out[image_id][0]})")
        out[image_id] = (where, names)

    if path.suffix.lower() == ".json":

        def unique(pairs):
            keys = [k for k, _ in pairs]
            dup = next((k for k in keys if keys.count(k) > 1), None)
            if dup is not None:
                raise DataError(f"{path}: key {dup!r} appears twice")
            return dict(pairs)

        data = _read_json(path, unique)
        classes = None
        if isinstance(data, dict) and isinstance(data.get("labels"), dict):
            if "classes" in data:
                if not _is_name_list(data["classes"]):
                    raise DataError(f"{path}: 'classes': expected a list of distinct names")
                classes = tuple(data["classes"])
                if not classes or classes[0] != "background":
                    classes = ("background", *classes)
            data = data["labels"]
        if not isinstance(data, dict) or not all(_is_name_list(v, False) for v in data.values()):
            raise DataError(f'{path}: expected {{"image": ["class", ...], ...}}')
        for k, v in data.items():
            add(str(k), list(v), f"{path} (key {k!r})")
        return out, classes
    if path.suffix.lower() == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: not a readable CSV file ({e})") from None
        for n, row in enumerate(rows, 1):
            if not row or not row[0].strip():
                continue
            if n == 1 and row[0].strip().lower() in ("image", "id", "file", "filename"):
                continue
            names = [x for cell in row[1:] for x in cell.replace(";", " ").split()]
            add(row[0].strip(), names, f"{path}:{n}")
        return out, None
    raise DataError(f"{path}: labels file must be .json or .csv")


def _is_name_list(x: object, distinct: bool = True) -> bool:
    ok = isinstance(x, list) and all(isinstance(v, str) for v in x)
    return ok and (not distinct or len(set(x)) == len(x))


def _read_labels_file(path: Path, classes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    raw, _ = _read_raw_labels(path)
    return {k: class_ids(names, classes, f"{where} ('{k}')") for k, (where, names) in raw.items()}


# --- images --------------------------------------------------------------------------------

# The default pixel limit of load_image (PSA_MAX_PIXELS overrides it): 100 megapixels, a
# 10000² image, which labels in a few GB; Pillow's own limit would refuse 179 MP with a
# DecompressionBombError, and a corrupt header can claim billions.
MAX_PIXELS = 100_000_000
_PILLOW_LIMIT = threading.Lock()


def max_pixels() -> int:
    """The pixel limit of ``load_image``: ``PSA_MAX_PIXELS`` when set, else ``MAX_PIXELS``."""
    raw = os.environ.get("PSA_MAX_PIXELS")
    if raw is None or not raw.strip():
        return MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise PsaError(f"PSA_MAX_PIXELS: expected a whole number of pixels >= 1, got {raw!r}")
    return value


def load_image(path: str | Path, limit: int | None = None):
    """Read an image as it is displayed: (H, W, 3) uint8 RGB.

    * EXIF orientation is applied (a phone's rotated JPEG gets a label of the shape a viewer
      shows);
    * 16-bit and 32-bit greyscale (PNG, TIFF) are scaled to 8 bits, floats in [0, 1] too;
    * every Pillow mode becomes RGB; transparency is composed over white, as viewers show it;
    * an image over ``limit`` pixels (default ``max_pixels()``) is refused before decoding, as
      are multi-page files (which page was meant?) and unreadable or truncated files.

    Raises:
        DataError: one line naming the file.
    """

    from PIL import Image

    limit = max_pixels() if limit is None else limit
    try:
        with _PILLOW_LIMIT:  # Pillow's own check is replaced by ours (limit may be larger)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with im:
            w, h = im.size
            if w * h > limit:
                raise DataError(
                    f"{path}: {w}x{h} pixels is over the limit of {limit} "
                    "(set PSA_MAX_PIXELS to raise it)"
                )
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise DataError(
                    f"{path}: holds {frames} pages or frames; save the one to label as an "
                    "image of its own"
                )
            return pil_to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected an image file, got a folder") from None
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # Pillow's decoders raise OSError (truncated), ValueError or SyntaxError (bad data).
        raise DataError(f"{path}: not a readable image ({e})") from None


def check_images(samples: list[Sample], what: str) -> None:
    """Open every image's header (no decoding): a training run refuses unreadable files
    before its first epoch rather than after minutes of work. One DataError lists them."""
    from PIL import Image

    bad = []
    limit = max_pixels()
    for s in samples:
        try:
            with _PILLOW_LIMIT:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(s.image)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
            with im:
                w, h = im.size
                if w * h > limit or getattr(im, "n_frames", 1) > 1:
                    load_image(s.image, limit)  # for its message
        except DataError as e:
            bad.append(str(e))
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            bad.append(f"{s.image}: not a readable image ({e})")
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"{what}: {len(bad)} of {len(samples)} images cannot be used: {bad[0]}{more}"
        )


def pil_to_rgb(im):
    """Any Pillow image → (H, W, 3) uint8 RGB as displayed (EXIF orientation, 16 bits, every
    mode, transparency over white: see ``load_image``)."""
    import warnings

    import numpy as np
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF oddities: the image still reads
        im = ImageOps.exif_transpose(im)

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im)
        if im.mode == "F":
            a = np.nan_to_num(a.astype(np.float64), nan=0.0)
            top = 1.0 if a.max() <= 1.0 else 255.0 if a.max() <= 255.0 else 65535.0
        else:  # 16 bits, or 32-bit integers holding 16-bit data (Pillow's PNG mode "I")
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            if a.max() > 65535:
                top = float(a.max())
        g = np.clip(np.rint(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


# --- what a command labels -----------------------------------------------------------------


LABELS_FILES = ("labels.json", "labels.csv", "image_labels.json")


def is_labeled_set(folder: Path) -> bool:
    """A VOC layout, a COCO root or a folder with a labels file (else: a plain folder of
    images)."""
    from psa_infer.coco import annotation_files

    voc = any((folder / d / "JPEGImages").is_dir() for d in (".", "VOC2012", "VOCdevkit/VOC2012"))
    labeled = voc or any((folder / f).is_file() for f in LABELS_FILES)
    return labeled or bool(annotation_files(folder))


def resolve_source(
    source: str | Path,
    classes: tuple[str, ...] | list[str],
    split: str = "train",
    labels_file: str | Path | None = None,
    class_names: list[str] | None = None,
    predict: bool = False,
) -> list[Sample]:
    """The images a command runs on, for a model of ``classes`` (names, background first).

    ``source`` is one image (its classes are ``class_names`` or predicted), a folder of
    images (classes predicted, or from ``labels_file`` / a labels file inside it, matched by
    name against ``classes``), or a data set (``split``, its labels and masks; its class list
    must be the model's). ``predict`` drops the given labels: ``Sample.labels`` is None.
    """
    classes = tuple(classes)
    src = Path(source)
    if src.is_file():
        if predict:
            return [Sample(check_id(src.stem, str(src)), src)]
        if not class_names:
            raise DataError(f"{src}: a single image needs its classes (or --predict-classes)")
        return [
            Sample(
                check_id(src.stem, str(src)),
                src,
                None,
                class_ids(class_names, classes, "--classes"),
            )
        ]
    if not src.is_dir():
        raise DataError(f"{src}: no such image or folder")
    if predict and not labels_file and not is_labeled_set(src):
        found = list_images(src)
        if not found:
            raise DataError(f"{src}: no images found ({', '.join(IMAGE_SUFFIXES)})")
        return [Sample(i, p) for i, p in found.items()]
    ds = open_dataset(src, labels_file, classes=classes)
    if list(ds.classes) != list(classes):
        raise DataError(
            f"{ds.root}: classes {list(ds.classes[1:])} differ from the model's {list(classes[1:])}"
        )
    samples = ds.split(split)
    if predict:
        return [Sample(s.id, s.image, s.mask) for s in samples]
    return samples
