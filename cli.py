"""psa — AffinityNet pseudo labels from image-level labels.

Every command reads files and writes files; heavy imports happen inside each command so that
``psa --help`` is instant and the runtime commands never import torch unless asked to.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

CONFIG_HELP = "Recipe YAML (sections train_cam, make_cam, …); defaults are the reference's."
SET_HELP = "Override one config value, e.g. --set train_cam.epochs=3 (repeatable)."


def friendly(fn):
    """Turn library errors into one line on stderr and exit status 1 (PSA_DEBUG=1: traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, KeyError) as e:
            if os.environ.get("PSA_DEBUG"):
                raise
            msg = str(e) if not isinstance(e, KeyError) else f"missing key {e}"
            raise click.ClickException(msg) from None

    return wrapper


def config_options(fn):
    fn = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(fn)
    fn = click.option(
        "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help=CONFIG_HELP
    )(fn)
    return fn


def _config(config_path, sets, extra: dict[str, object]):
    from psa_train.config import load_config

    overrides = [f"{k}={json.dumps(v)}" for k, v in extra.items() if v is not None]
    return load_config(config_path, list(sets) + overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="psa")
def main():
    """AffinityNet (Ahn & Kwak, CVPR 2018): pixel-level pseudo labels from image-level labels.

    \b
    Pipeline (each stage reads and writes files):
      make-synthetic → train-cam → make-cam → make-aff-labels → train-aff → label → eval
    Start with `psa demo --out DIR` to run the whole chain on synthetic data.
    """


@main.command("make-synthetic")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--num-images", "-n", type=click.IntRange(2), default=400, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(64),
    default=160,
    show_default=True,
    help="Typical image side; each image's H and W vary around it.",
)
@click.option("--num-classes", type=click.IntRange(1, 20), default=6, show_default=True)
@friendly
def make_synthetic_cmd(out, num_images, seed, size, num_classes):
    """Write a synthetic VOC-layout data set with ground-truth masks to OUT.

    Each class is recognisable only by a small part; most of its body looks like other
    classes' bodies — the situation AffinityNet exists for.
    """
    from psa_train.synthetic import make_synthetic

    info = make_synthetic(
        out, num_images, seed=seed, size=size, num_classes=num_classes, progress=True
    )
    click.echo(json.dumps(info, default=str))


@main.command("train-cam")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    required=True,
    help="Run directory (config, metrics, checkpoints).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    help="Image-level labels file (CSV/JSON) for a plain image folder.",
)
@click.option("--backbone", type=click.Choice(["tiny", "mobilenet_v2", "resnet38"]))
@click.option("--weights", help="ImageNet weights: 'default', a file, or 'none'.")
@click.option("--epochs", type=click.IntRange(1))
@click.option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.safetensors.")
@config_options
@friendly
def train_cam_cmd(data, out, labels, backbone, weights, epochs, device, resume, config_path, sets):
    """Train the CAM classifier on DATA (a VOC-layout root or an image folder)."""
    from psa_infer.datasets import open_dataset
    from psa_train.train_cam import train_cam

    if weights == "none":
        weights = None
        sets = (*sets, "train_cam.weights=null")
    cfg = _config(
        config_path,
        sets,
        {
            "train_cam.backbone": backbone,
            "train_cam.weights": weights,
            "train_cam.epochs": epochs,
            "train_cam.device": device,
        },
    )
    path = train_cam(open_dataset(data, labels), out, cfg.train_cam, resume=resume)
    click.echo(f"wrote {path}")


@main.command("make-cam")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--checkpoint",
    "-c",
    type=click.Path(exists=True),
    required=True,
    help="cam.safetensors from train-cam.",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--split", help="Split to process (default: make_cam.split, 'train').")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False))
@click.option("--device")
@config_options
@friendly
def make_cam_cmd(data, checkpoint, out, split, labels, device, config_path, sets):
    """Multi-scale + flip CAMs of the present classes, one OUT/<id>.npz per image."""
    from psa_infer.datasets import open_dataset
    from psa_train.make_cam import make_cams

    cfg = _config(config_path, sets, {"make_cam.split": split, "make_cam.device": device})
    n = make_cams(open_dataset(data, labels), checkpoint, out, cfg.make_cam)
    click.echo(f"wrote {n} CAM files to {out}")


@main.command("eval")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--cams",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of CAM .npz files (from make-cam).",
)
@click.option(
    "--labels-dir",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of label PNGs (from label).",
)
@click.option("--split", default="val", show_default=True)
@click.option(
    "--bg-threshold",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Constant background score for CAMs.",
)
@click.option("--bg-sweep", is_flag=True, help="Scan background thresholds 0.05…0.60.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the report.")
@friendly
def eval_cmd(data, cams, labels_dir, split, bg_threshold, bg_sweep, json_out):
    """mIoU, per-class IoU and pixel accuracy of CAMs or label PNGs against DATA's masks."""
    from psa_infer.datasets import open_dataset
    from psa_infer.evaluate import evaluate_cams, evaluate_labels
    from psa_infer.metrics import format_table

    if (cams is None) == (labels_dir is None):
        raise click.UsageError("give exactly one of --cams or --labels-dir")
    ds = open_dataset(data)
    if cams:
        ths = [round(0.05 * i, 2) for i in range(1, 13)] if bg_sweep else [bg_threshold]
        reports = evaluate_cams(ds, cams, split, ths)
        best = max(reports, key=lambda r: r["miou"])
        click.echo(format_table(best))
        if bg_sweep:
            click.echo("\nbg threshold  mIoU %")
            for r in reports:
                mark = "  ← best" if r is best else ""
                click.echo(f"{r['bg_threshold']:>12.2f}  {r['miou']:6.2f}{mark}")
        report = {"kind": "cam", "split": split, "best": best, "sweep": reports}
    else:
        report = {"kind": "labels", "split": split, **evaluate_labels(ds, labels_dir, split)}
        click.echo(format_table(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))


@main.command("make-aff-labels")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--cams",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Folder of CAM .npz files (from make-cam).",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--split", help="Split to process (default: aff_labels.split, 'train').")
@click.option("--no-crf", is_flag=True, help="Skip the dense CRF (faster, less accurate).")
@config_options
@friendly
def make_aff_labels_cmd(data, cams, out, split, no_crf, config_path, sets):
    """Confident foreground/background regions from CAMs (low/high α + dense CRF)."""
    from psa_infer.datasets import open_dataset
    from psa_train.make_aff_labels import make_aff_labels

    cfg = _config(
        config_path, sets, {"aff_labels.split": split, "aff_labels.crf": False if no_crf else None}
    )
    n = make_aff_labels(open_dataset(data), cams, out, cfg.aff_labels)
    click.echo(f"wrote {n} affinity-label files to {out}")


@main.command("train-aff")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--aff-labels",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Folder written by make-aff-labels.",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--backbone", type=click.Choice(["tiny", "mobilenet_v2", "resnet38"]))
@click.option("--weights", help="ImageNet weights: 'default', a file, or 'none'.")
@click.option("--epochs", type=click.IntRange(1))
@click.option("--device")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.safetensors.")
@config_options
@friendly
def train_aff_cmd(
    data, aff_labels, out, backbone, weights, epochs, device, resume, config_path, sets
):
    """Train AffinityNet on the confident regions of make-aff-labels."""
    from psa_infer.datasets import open_dataset
    from psa_train.train_aff import train_aff

    if weights == "none":
        weights = None
        sets = (*sets, "train_aff.weights=null")
    cfg = _config(
        config_path,
        sets,
        {
            "train_aff.backbone": backbone,
            "train_aff.weights": weights,
            "train_aff.epochs": epochs,
            "train_aff.device": device,
        },
    )
    tc = cfg.train_cam
    path = train_aff(
        open_dataset(data), aff_labels, out, cfg.train_aff, tc.mean, tc.std, resume=resume
    )
    click.echo(f"wrote {path}")


def _parse_shard(value: str | None) -> tuple[int, int]:
    """--shard i/n, or RANK/WORLD_SIZE from torchrun; default the whole list."""
    if value:
        try:
            i, n = (int(x) for x in value.split("/"))
        except ValueError:
            raise click.BadParameter(f"expected i/n, got {value!r}", param_hint="--shard") from None
        if not (n >= 1 and 0 <= i < n):
            raise click.BadParameter(f"need 0 <= i < n, got {value!r}", param_hint="--shard")
        return i, n
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def _label_items(source, split, labels, classes_opt, predict, model_classes):
    """What to label: a data set split, a folder with a labels file, or one image."""
    from psa_infer.datasets import IMAGE_SUFFIXES, class_ids, open_dataset
    from psa_infer.pipeline import Item

    src = Path(source)
    if src.is_file():
        if predict:
            return [Item(src.stem, src, None)]
        if not classes_opt:
            raise click.UsageError("a single image needs --classes NAME,… or --predict-classes")
        names = [c for c in classes_opt.split(",") if c.strip()]
        return [Item(src.stem, src, class_ids(names, tuple(model_classes), "--classes"))]
    if predict and not labels and not (src / "JPEGImages").is_dir():
        imgs = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not imgs:
            raise click.UsageError(f"{src}: no images found")
        return [Item(p.stem, p, None) for p in imgs]
    ds = open_dataset(src, labels)
    if list(ds.classes) != list(model_classes):
        raise ValueError(
            f"{src}: classes {list(ds.classes[1:])} differ from the model's {model_classes[1:]}"
        )
    return [Item(s.id, s.image, None if predict else s.labels) for s in ds.split(split)]


@main.command("label")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--cam",
    "cam_ckpt",
    type=click.Path(exists=True),
    required=True,
    help="cam.safetensors (train-cam).",
)
@click.option(
    "--aff",
    "aff_ckpt",
    type=click.Path(exists=True),
    required=True,
    help="aff.safetensors (train-aff).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for <id>.png palette label maps.",
)
@click.option("--split", help="Data-set split (default: label.split).")
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    help="Image-level labels file (CSV/JSON) for an image folder.",
)
@click.option("--classes", "classes_opt", help="Classes of a single image: NAME,NAME.")
@click.option(
    "--predict-classes",
    is_flag=True,
    help="Untagged images: classes whose classifier probability > label.class_threshold.",
)
@click.option(
    "--cams",
    "cam_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Reuse CAMs from make-cam instead of recomputing them.",
)
@click.option(
    "--crf", is_flag=True, default=None, help="Refine the walked scores with a dense CRF."
)
@click.option(
    "--pairs",
    type=click.Choice(["full", "psa"]),
    help="full: every pair (default); psa: the reference's pair set, bit for bit.",
)
@click.option("--backend", type=click.Choice(["torch"]), default="torch", show_default=True)
@click.option("--shard", help="i/n: label every n-th image from i (RANK/WORLD_SIZE if unset).")
@click.option("--device")
@config_options
@friendly
def label_cmd(
    source,
    cam_ckpt,
    aff_ckpt,
    out,
    split,
    labels,
    classes_opt,
    predict_classes,
    cam_dir,
    crf,
    pairs,
    backend,
    shard,
    device,
    config_path,
    sets,
):
    """Pseudo labels (palette PNGs) for SOURCE: a data set, an image folder or one image.

    CAMs of the present classes are spread over whole objects by a random walk over
    AffinityNet's affinities (α=16, β=8, t=256 by default), upsampled and argmaxed.
    """
    from psa_infer.pipeline import label_items
    from psa_train.label import torch_labeler

    cfg = _config(
        config_path,
        sets,
        {"label.split": split, "label.crf": crf, "label.pairs": pairs, "label.device": device},
    )
    labeler, meta = torch_labeler(cam_ckpt, aff_ckpt, cfg.label, cfg.make_cam)
    items = _label_items(
        source, cfg.label.split, labels, classes_opt, predict_classes, meta["classes"]
    )
    stats = label_items(
        labeler,
        items,
        out,
        crf=cfg.label.crf,
        class_threshold=cfg.label.class_threshold,
        cam_dir=cam_dir,
        num_classes=len(meta["classes"]) - 1,
        shard=_parse_shard(shard),
    )
    click.echo(json.dumps(stats))


@main.command("demo")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default="demo_out",
    show_default=True,
    help="Everything the demo makes goes here.",
)
@click.option("--num-images", type=click.IntRange(8), help="Synthetic images (default: recipe).")
@click.option("--seed", type=int, default=0, show_default=True)
@config_options
@friendly
def demo_cmd(out, num_images, seed, config_path, sets):
    """Run the whole chain on fresh synthetic data on this machine and report mIoU.

    make-synthetic → train-cam → make-cam → make-aff-labels → train-aff → label → eval,
    all under --out; writes overview.png (image | truth | CAM | random walk | + CRF).
    The last line printed is `RESULT {json}` with cam_miou, rw_miou, rw_crf_miou, seconds.
    """
    from psa_train.demo import run_demo

    result = run_demo(
        Path(out), config_path=config_path, sets=sets, num_images=num_images, seed=seed
    )
    click.echo("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
