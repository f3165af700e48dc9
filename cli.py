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

# The keys of psa_train.backbones.BACKBONES (a test keeps them equal), without importing torch.
from psa_train.config import BACKBONE_NAMES, DemoConfig

CONFIG_HELP = "Recipe YAML (sections train_cam, make_cam, …); defaults are the reference's."
SET_HELP = "Override one config value, e.g. --set train_cam.epochs=3 (repeatable)."


# Exit statuses: 0 done, 1 a user error (one line), 2 a usage error (click), 3 some images of a
# folder or split failed (listed in the failures file), 70 a bug in psa (EX_SOFTWARE).
EXIT_SOME_FAILED = 3
EXIT_BUG = 70


class _Bug(click.ClickException):
    exit_code = EXIT_BUG

    def show(self, file=None) -> None:
        click.echo(self.message, err=True)


def friendly(fn):
    """User errors (``PsaError``, file-system errors) become one line on stderr and exit 1;
    anything else is a bug in psa: one line saying so, exit 70 (PSA_DEBUG=1: the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from psa_infer.datasets import max_pixels
        from psa_infer.errors import PsaError, missing_module_message
        from psa_infer.randomwalk import check_walk_env

        try:
            max_pixels()  # environment settings first, before any work
            check_walk_env()
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if os.environ.get("PSA_DEBUG"):
                raise
            if isinstance(e, PsaError):
                msg = str(e)
            elif isinstance(e, ModuleNotFoundError) and missing_module_message(e.name):
                msg = missing_module_message(e.name)
            elif isinstance(e, OSError):  # disk full, permission denied, …: the user's to fix
                msg = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
            else:
                raise _bug(e) from None
            raise click.ClickException(_one_line(msg)) from None

    return wrapper


def _one_line(msg: str) -> str:
    return " ".join(msg.split()) or "(no message)"


def _bug(e: BaseException) -> _Bug:
    return _Bug(
        f"psa: unexpected error (a bug in psa, not in your input): {type(e).__name__}: "
        f"{_one_line(str(e))[:300]} — rerun with PSA_DEBUG=1 for the traceback and report it"
    )


def fail_fast_option(fn):
    return click.option(
        "--fail-fast",
        is_flag=True,
        help="Stop at the first image that fails (default: go on, list failures, exit 3).",
    )(fn)


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
@click.version_option(package_name="psa-affinity")  # the distribution; the command is `psa`
def main():
    """AffinityNet (Ahn & Kwak, CVPR 2018): pixel-level pseudo labels from image-level labels.

    \b
    Pipeline (each stage reads and writes files):
      make-synthetic → train-cam → make-cam → make-aff-labels → train-aff → label → eval
    Start with `psa demo --out DIR` to run the whole chain on synthetic data, and
    `psa pipeline DATA -o DIR` to run it on your own.
    """


@main.command("make-synthetic")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--num-images", "-n", type=click.IntRange(2), default=400, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(64),
    default=160,
    show_default=True,
    help="Typical image side; each image's H and W vary around it.",
)
@click.option(
    "--num-classes", type=click.IntRange(1, 20), help="Default: the style's (6; 12 for many)."
)
@click.option(
    "--style",
    type=click.Choice(DemoConfig.styles),
    default="default",
    show_default=True,
    help="What the images look like (below).",
)
@friendly
def make_synthetic_cmd(out, num_images, seed, size, num_classes, style):
    """Write a synthetic VOC-layout data set with ground-truth masks to OUT.

    In the default style each class is recognisable only by a small part; most of its body
    looks like other classes' bodies — the situation AffinityNet exists for. The styles
    differ as real data sets do:

    \b
      default   a head of ~12% of the object marks the class; shared body textures; photos
      parts     the same with a head of ~5% of the object
      textured  no head: a texture per class over the whole body; larger objects, 1-2 each
      many      12 classes; small objects, 1-6 per image; plain or blurred backgrounds

    Prints a JSON summary with the set's measured statistics (foreground share, objects
    and classes per image, part share, object extent), also kept in OUT/psa_dataset.json.
    """
    from psa_train.synthetic import make_synthetic

    info = make_synthetic(
        out,
        num_images,
        seed=seed,
        size=size,
        num_classes=num_classes,
        style=style,
        progress=True,
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
@click.option("--backbone", type=click.Choice(BACKBONE_NAMES))
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
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnxruntime"]),
    default="torch",
    show_default=True,
    help="onnxruntime: the network exported to ONNX, on the CPU (3x torch's speed on a CPU).",
)
@fail_fast_option
@config_options
@friendly
def make_cam_cmd(
    data, checkpoint, out, split, labels, device, backend, fail_fast, config_path, sets
):
    """Multi-scale + flip CAMs of the present classes, one OUT/<id>.npz per image."""
    from psa_infer.datasets import open_dataset
    from psa_train.make_cam import make_cams

    if backend == "onnxruntime" and device not in (None, "cpu"):
        raise click.UsageError("--backend onnxruntime runs on the CPU; drop --device")
    cfg = _config(config_path, sets, {"make_cam.split": split, "make_cam.device": device})
    forward = None
    if backend == "onnxruntime":
        from export.onnx_export import cam_checkpoint_forward

        forward = cam_checkpoint_forward(checkpoint)
    stats = make_cams(
        open_dataset(data, labels),
        checkpoint,
        out,
        cfg.make_cam,
        fail_fast=fail_fast,
        forward=forward,
    )
    _finish(stats, "make-cam")


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
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Processes that run the images' CRFs side by side (default: the CPUs this process "
    "may use; the files are the same for any number).",
)
@fail_fast_option
@config_options
@friendly
def make_aff_labels_cmd(data, cams, out, split, no_crf, workers, fail_fast, config_path, sets):
    """Confident foreground/background regions from CAMs (low/high α + dense CRF)."""
    from psa_infer.datasets import open_dataset
    from psa_infer.runs import usable_cpus
    from psa_train.make_aff_labels import make_aff_labels

    cfg = _config(
        config_path, sets, {"aff_labels.split": split, "aff_labels.crf": False if no_crf else None}
    )
    stats = make_aff_labels(
        open_dataset(data),
        cams,
        out,
        cfg.aff_labels,
        fail_fast=fail_fast,
        workers=workers or usable_cpus(),
    )
    _finish(stats, "make-aff-labels")


@main.command("train-aff")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--aff-labels",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Folder written by make-aff-labels.",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--backbone", type=click.Choice(BACKBONE_NAMES))
@click.option("--weights", help="ImageNet weights: 'default', a file, or 'none'.")
@click.option("--epochs", type=click.IntRange(1))
@click.option("--device")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.safetensors.")
@config_options
@friendly
def train_aff_cmd(
    data, aff_labels, out, backbone, weights, epochs, device, resume, config_path, sets
):
    """Train AffinityNet on the confident regions of make-aff-labels.

    It holds out train_aff.holdout of the training images (train-cam's, by the same hash;
    OUT/heldout.txt), scores each epoch's loss on their confident pairs against one constant
    affinity's, keeps the epoch that beats it most (train_aff.select) and ends with a verdict
    in OUT/heldout.json.
    """
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


@main.command("train-seg")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--labels-dir",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of <id>.png label maps: pseudo labels from `psa label`, or DATA's "
    "SegmentationClass for the fully supervised bound (default: DATA's ground truth).",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--backbone", type=click.Choice(BACKBONE_NAMES))
@click.option("--weights", help="ImageNet weights: 'default', a file, or 'none'.")
@click.option("--epochs", type=click.IntRange(1))
@click.option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.safetensors.")
@config_options
@friendly
def train_seg_cmd(
    data, labels_dir, out, backbone, weights, epochs, device, resume, config_path, sets
):
    """Train a segmentation network (a DeepLab head at stride 8, or 16 on mobilenet_v2_os16)
    on label maps of DATA's train_seg.train_split; 255 is ignored. Writes OUT/seg.safetensors
    for `psa export-seg`."""
    from psa_infer.datasets import open_dataset
    from psa_train.train_seg import train_seg

    if weights == "none":
        weights = None
        sets = (*sets, "train_seg.weights=null")
    cfg = _config(
        config_path,
        sets,
        {
            "train_seg.backbone": backbone,
            "train_seg.weights": weights,
            "train_seg.epochs": epochs,
            "train_seg.device": device,
        },
    )
    path = train_seg(open_dataset(data), labels_dir, out, cfg.train_seg, resume=resume)
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
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return 0, 1
    if rank is None or world is None:
        given, other = ("RANK", "WORLD_SIZE") if world is None else ("WORLD_SIZE", "RANK")
        raise click.UsageError(f"{given} is set but {other} is not: set both (or --shard i/n)")
    try:
        i, n = int(rank), int(world)
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise click.UsageError(
            f"RANK={rank!r} WORLD_SIZE={world!r}: expected whole numbers with 0 <= RANK < "
            "WORLD_SIZE"
        )
    return i, n


def _finish(stats: dict, what: str) -> None:
    """Print a stage's counts as JSON on stdout; exit 3 when some images failed."""
    click.echo(json.dumps(stats))
    if stats.get("failed"):
        # Overlays drawn for images labeled by an earlier run are written work as well.
        total = (
            stats["failed"]
            + stats.get("done", stats.get("labeled", 0))
            + stats.get("overlays_added", 0)
        )
        skipped = stats.get("skipped", 0)
        if total > stats["failed"]:
            rest = (
                "the other was written"
                if total - stats["failed"] == 1
                else "the others were written"
            )
        else:
            rest = "nothing new was written" if skipped else "nothing was written"
        if skipped:
            rest += f" ({skipped} done before were skipped)"
        click.echo(
            f"Error: {stats['failed']} of {total} images failed {what} (reasons in "
            f"{stats['failures_file']}); {rest}",
            err=True,
        )
        sys.exit(EXIT_SOME_FAILED)


@main.command("label")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--cam",
    "cam_ckpt",
    type=click.Path(exists=True),
    help="cam.safetensors (train-cam); --backend torch only.",
)
@click.option(
    "--aff",
    "aff_ckpt",
    type=click.Path(exists=True),
    help="aff.safetensors (train-aff); --backend torch only.",
)
@click.option(
    "--model",
    "bundle",
    type=click.Path(exists=True, file_okay=False),
    help="Bundle folder from `psa export` (with *.engine for tensorrt); not for torch.",
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
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnxruntime", "tensorrt"]),
    default="torch",
    show_default=True,
    help="torch: the checkpoints; onnxruntime / tensorrt: the bundle of --model.",
)
@click.option(
    "--walk",
    type=click.Choice(["auto", "onnx", "numpy"]),
    default="auto",
    show_default=True,
    help="Bundle backends: rw.onnx/rw.engine or the numpy walk; auto = rw on a GPU, else numpy.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="Bundle backends: which graphs run (from psa export --precision); the walk is fp32.",
)
@click.option("--shard", help="i/n: label every n-th image from i (RANK/WORLD_SIZE if unset).")
@click.option(
    "--device",
    help="torch: auto, cpu, cuda, cuda:N; onnxruntime: auto (best provider), cpu, cuda or "
    "cuda:N (the CUDA provider on GPU N).",
)
@click.option(
    "--class-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    help="--predict-classes: one score threshold for every class (default: the bundle's "
    "calibrated per-class thresholds, else label.class_threshold).",
)
@click.option("--overlay", is_flag=True, help="Also write OUT/overlays/<id>.jpg to look at.")
@click.option("--overwrite", is_flag=True, help="Relabel images whose label map exists.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process; ray: Ray actors (bundle backends; the ray extra).",
)
@click.option(
    "--address",
    help="--engine ray: the Ray cluster (auto: the one this machine joined; default: start "
    "a local Ray with ACTORS x THREADS CPUs).",
)
@click.option(
    "--actors",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="--engine ray: actors, each with its own bundle sessions (one GPU each on tensorrt).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="ONNX Runtime and walk threads per labeling process or actor (default: this "
    "machine's CPUs locally, 1 per actor on Ray).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or provider line.")
@click.option("-v", "--verbose", is_flag=True, help="A line per image (classes, seconds).")
@fail_fast_option
@config_options
@friendly
def label_cmd(
    source,
    cam_ckpt,
    aff_ckpt,
    bundle,
    out,
    split,
    labels,
    classes_opt,
    predict_classes,
    cam_dir,
    crf,
    pairs,
    backend,
    walk,
    precision,
    shard,
    device,
    class_threshold,
    overlay,
    overwrite,
    engine,
    address,
    actors,
    threads,
    quiet,
    verbose,
    fail_fast,
    config_path,
    sets,
):
    """Pseudo labels (palette PNGs) for SOURCE: a data set, an image folder or one image.

    CAMs of the present classes are spread over whole objects by a random walk over
    AffinityNet's affinities (α=16, β=8, t=256 by default), upsampled and argmaxed; with
    label.normalize (the demo recipe's) each walked class is first divided by its maximum.

    \b
    --backend torch        --cam CKPT --aff CKPT (settings from the config)
    --backend onnxruntime  --model BUNDLE (scales, α, β, t, radius, pairs, normalize and
                           the CRF's crf_sxy from its meta.json)
    --backend tensorrt     --model BUNDLE after `psa build-engine BUNDLE` on this machine
    The bundle backends never import torch.

    Writes OUT/<id>.png and OUT/labels.jsonl (a record per image: classes by name with their
    scores, pixel shares, size, backend, seconds). stdout gets one JSON summary; progress and
    messages go to stderr, so `psa label … | jq` works.

    --engine ray spreads the images over Ray actors (--actors, --threads each; --address of a
    cluster) and writes the same files here; a killed actor is restarted by Ray and a re-run
    skips what is done (docs/scale.md).
    """
    from psa_infer.datasets import resolve_source
    from psa_infer.pipeline import label_items

    if classes_opt and predict_classes:
        raise click.UsageError("give --classes or --predict-classes, not both")
    ray = engine == "ray"
    if ray and backend == "torch":
        raise click.UsageError(
            "--engine ray labels with a bundle: --backend onnxruntime or tensorrt --model BUNDLE"
        )
    if ray and shard:
        raise click.UsageError("--engine ray schedules every image itself: drop --shard")
    if not ray and address:
        raise click.UsageError("--address is the Ray cluster of --engine ray")
    shard_i_n = (0, 1) if ray else _parse_shard(shard)  # before any model is loaded
    cfg = _config(
        config_path,
        sets,
        {"label.split": split, "label.crf": crf, "label.pairs": pairs, "label.device": device},
    )
    if threads is not None and backend == "torch":
        raise click.UsageError("--threads: bundle backends (onnxruntime, tensorrt)")
    opened = None
    walk_threads = os.environ.get("PSA_RW_THREADS")
    if backend == "torch":
        if not (cam_ckpt and aff_ckpt) or bundle:
            raise click.UsageError(
                "--backend torch needs --cam and --aff (and no --model); a bundle runs with "
                "--backend onnxruntime or tensorrt"
            )
        if precision != "fp32":
            raise click.UsageError(
                f"--precision {precision}: a bundle's graphs (--backend onnxruntime or "
                "tensorrt); the torch backend runs the checkpoints in float32"
            )
        from psa_train.label import torch_labeler

        labeler, meta = torch_labeler(cam_ckpt, aff_ckpt, cfg.label, cfg.make_cam)
    else:
        if not bundle or cam_ckpt or aff_ckpt:
            raise click.UsageError(
                f"--backend {backend} needs --model BUNDLE (from psa export) and no --cam/--aff"
            )
        from psa_infer.bundle import load_meta, model_entries, open_bundle

        ort = backend == "onnxruntime"
        providers, gpu = _ort_providers(cfg.label.device) if ort else ("auto", None)
        if ray:  # the actors open the bundle; here only what it says
            from psa_infer.ray_engine import BundleOpener

            meta = load_meta(bundle)
            model_entries(meta, precision, bundle)  # the variant exists
            # One GPU per actor where the models run on one; Ray sets CUDA_VISIBLE_DEVICES,
            # so the actor's device is its GPU 0.
            on_gpu = backend == "tensorrt" or str(cfg.label.device).startswith("cuda")
            opener = BundleOpener(
                str(Path(bundle).resolve()),
                backend,
                providers if isinstance(providers, str) else tuple(providers),
                walk,
                precision,
            )
        else:
            opened = open_bundle(
                bundle, backend, providers, walk, threads, precision=precision, device_id=gpu
            )
            labeler, meta = opened.labeler, opened.meta
            used = sorted(set(opened.providers.values()))
            if not quiet:
                graphs = "" if precision == "fp32" else f"; {precision} graphs"
                click.echo(f"{backend}: {', '.join(used)}; walk: {opened.walk}{graphs}", err=True)
    try:
        if threads is not None and not ray:
            os.environ["PSA_RW_THREADS"] = str(threads)  # the walk's, like ONNX Runtime's
        if backend != "torch" and pairs and pairs != meta["pairs"]:
            raise click.UsageError(
                f"--pairs {pairs}: the bundle was exported with pairs={meta['pairs']}; "
                "re-export it to change the walk"
            )
        items = resolve_source(
            source,
            meta["classes"],
            cfg.label.split,
            labels,
            [c for c in (classes_opt or "").split(",") if c.strip()],
            predict_classes,
        )
        thresholds = _class_thresholds(class_threshold, meta, cfg.label.class_threshold)
        if ray:
            from psa_infer.pipeline import LabelJob
            from psa_infer.ray_engine import label_on_ray

            job = LabelJob(
                Path(out),
                cfg.label.crf,
                thresholds,
                cam_dir,
                len(meta["classes"]) - 1,
                meta["classes"],
                {"backend": backend, "walk": walk},  # each actor puts in the walk it runs
                overwrite,
                overlay,
            )
            stats = label_on_ray(
                opener,
                job,
                items,
                actors=actors,
                threads=threads or 1,
                gpus=1 if on_gpu else 0,
                address=address,
                fail_fast=fail_fast,
                progress=not quiet,
                verbose=verbose,
            )
        else:
            stats = label_items(
                labeler,
                items,
                out,
                crf=cfg.label.crf,
                class_threshold=thresholds,
                cam_dir=cam_dir,
                num_classes=len(meta["classes"]) - 1,
                shard=shard_i_n,
                fail_fast=fail_fast,
                class_names=meta["classes"],
                info={"backend": backend, "walk": "numpy" if backend == "torch" else opened.walk},
                overwrite=overwrite,
                overlay=overlay,
                progress=not quiet,
                verbose=verbose,
            )
    finally:
        if opened is not None:
            opened.close()  # device memory and sessions, before the interpreter tears down
        if threads is not None and not ray:  # as it was (a library caller's process goes on)
            os.environ.pop("PSA_RW_THREADS", None)
            if walk_threads is not None:
                os.environ["PSA_RW_THREADS"] = walk_threads
    if stats["skipped"] and not quiet:
        click.echo(
            f"skipped {stats['skipped']} images labeled before (--overwrite relabels them)",
            err=True,
        )
    _finish(stats, "to label")


def _class_thresholds(option: float | None, meta: dict, config_value: float):
    """--class-threshold, else the bundle's calibrated per-class thresholds, else the config."""
    if option is not None:
        return option
    calibrated = meta.get("class_thresholds")
    if isinstance(calibrated, dict):
        return [float(calibrated[name]) for name in meta["classes"][1:]]
    return config_value


def _ort_providers(device: str) -> tuple[str | list[str], int | None]:
    """label.device for ONNX Runtime → (providers, GPU id): auto → its best provider (TensorRT,
    CUDA, CPU, whichever it has); cpu → CPU; cuda or cuda:N → CUDA on GPU N (default 0)."""
    if device == "auto":
        return "auto", None
    if device == "cpu":
        return ["CPUExecutionProvider"], None
    kind, _, index = device.partition(":")
    if kind == "cuda" and (not index or index.isdigit()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], int(index) if index else None
    raise click.BadParameter(
        f"expected auto, cpu, cuda or cuda:N with a bundle, got {device!r}", param_hint="--device"
    )


# ---------------------------------------------------------------------------- export, engines


def _image_sides(ctx, param, value: str) -> tuple[int, int, int]:
    """--profile MIN,OPT,MAX image sides in pixels."""
    try:
        sides = tuple(int(v) for v in value.split(","))
    except ValueError:
        sides = ()
    if len(sides) != 3 or not 1 <= sides[0] <= sides[1] <= sides[2]:
        raise click.BadParameter(
            f"expected MIN,OPT,MAX pixels with MIN <= OPT <= MAX, got {value!r}"
        )
    return sides


@main.command("export")
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
    help="Bundle folder to write (an earlier bundle there is replaced).",
)
@click.option(
    "--opset",
    type=click.IntRange(13),
    default=17,
    show_default=True,
    help="ONNX opset of all three graphs (TensorRT 8.5 / JetPack 5 reads up to 17).",
)
@click.option(
    "--verify",
    "verify_source",
    type=click.Path(exists=True),
    help="Check torch vs ONNX Runtime on a data set (eval.split, with masks: ΔmIoU), an image "
    "folder or one image; a failed check writes no bundle.",
)
@click.option(
    "--verify-limit",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Images to verify on.",
)
@click.option(
    "--precision",
    "precisions",
    default="fp32",
    show_default=True,
    help="Graphs to write: fp32 always, plus fp16 (float16 inside, float32 I/O) and/or int8 "
    "(explicit symmetric Q/DQ for TensorRT; needs --calib), e.g. fp32,fp16,int8.",
)
@click.option(
    "--calib",
    "calib_source",
    type=click.Path(exists=True),
    help="INT8 calibration images: a folder of images, or a data set (its make_cam.split, "
    "training images; never the split you verify on).",
)
@click.option(
    "--calib-limit",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Calibration images to use (each at every CAM scale, with its mirror image).",
)
@config_options
@friendly
def export_cmd(
    cam_ckpt,
    aff_ckpt,
    out,
    opset,
    verify_source,
    verify_limit,
    precisions,
    calib_source,
    calib_limit,
    config_path,
    sets,
):
    """Export the CAM and affinity networks to a model bundle for the torch-free runtime.

    Writes cam.onnx, aff.onnx, rw.onnx (the random walk) and meta.json (classes, mean/std,
    scales and flip from make_cam, α/β/t/radius/pairs from label) into OUT; with --precision,
    also cam.fp16.onnx, aff.fp16.onnx, cam.int8.onnx, aff.int8.onnx (the walk stays float32),
    which --verify compares with the float32 graphs (label agreement, ΔmIoU).
    """
    from export.bundle import VERIFY_REPORT, export_bundle
    from export.precision import parse_precisions
    from export.verify import VerifyError, format_report, verify_images, verify_truth
    from psa_infer.bundle import load_meta

    chosen = parse_precisions(precisions)
    if "int8" in chosen and not calib_source:
        raise click.UsageError("--precision int8 needs --calib IMAGES (training images)")
    cfg = _config(config_path, sets, {})
    images = calib = truth = None
    if verify_source or calib_source:
        from psa_train.checkpoint import load_checkpoint

        _, ckpt_meta = load_checkpoint(cam_ckpt, kind="cam")
    if verify_source:
        images = verify_images(verify_source, ckpt_meta["classes"], cfg.eval.split, verify_limit)
        truth = verify_truth(verify_source, ckpt_meta["classes"], cfg.eval.split)
    if calib_source and "int8" in chosen:
        calib = verify_images(calib_source, ckpt_meta["classes"], cfg.make_cam.split, calib_limit)
    try:
        path = export_bundle(
            cam_ckpt,
            aff_ckpt,
            out,
            cfg.label,
            cfg.make_cam,
            opset=opset,
            verify_images=images,
            verify_truth=truth,
            aff_labels_cfg=cfg.aff_labels,
            precisions=chosen,
            calib_images=calib,
        )
    except VerifyError as e:
        click.echo(format_report(e.report))
        raise click.ClickException(f"{e} (no bundle written to {out})") from None
    if images:
        click.echo(format_report(json.loads((path / VERIFY_REPORT).read_text())))
    meta = load_meta(path, check_files=False)
    made = ", ".join(["fp32", *meta.get("precisions", {})])
    click.echo(
        f"wrote {path}: {len(meta['classes']) - 1} classes, opset {meta['opset']}, "
        f"precisions {made}"
    )


@main.command("export-seg")
@click.option(
    "--seg",
    "seg_ckpt",
    type=click.Path(exists=True),
    required=True,
    help="seg.safetensors (train-seg).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    required=True,
    help="Bundle folder to write (an earlier segmentation bundle there is replaced).",
)
@click.option("--opset", type=click.IntRange(13), default=17, show_default=True)
@click.option(
    "--precision",
    "precisions",
    default="fp32",
    show_default=True,
    help="Graphs to write: fp32 always, plus fp16 and/or int8 (needs --calib), e.g. fp32,fp16.",
)
@click.option(
    "--calib",
    "calib_source",
    type=click.Path(exists=True),
    help="INT8 calibration images: a folder of images, or a data set (its train split).",
)
@click.option("--calib-limit", type=click.IntRange(1), default=32, show_default=True)
@friendly
def export_seg_cmd(seg_ckpt, out, opset, precisions, calib_source, calib_limit):
    """Export the segmentation network of train-seg to a bundle of its own: seg.onnx (image
    (B, 3, H, W) → logits (B, K+1, H, W), any H and W) and meta.json, for `psa segment`."""
    from export.precision import parse_precisions
    from export.seg_bundle import export_seg_bundle
    from export.verify import verify_images
    from psa_infer.segment import load_seg_meta
    from psa_train.checkpoint import load_checkpoint

    chosen = parse_precisions(precisions)
    if "int8" in chosen and not calib_source:
        raise click.UsageError("--precision int8 needs --calib IMAGES (training images)")
    calib = None
    if "int8" in chosen:
        _, ck = load_checkpoint(seg_ckpt, kind="seg")
        calib = verify_images(calib_source, ck["classes"], "train", calib_limit)
    path = export_seg_bundle(seg_ckpt, out, opset, precisions=chosen, calib_images=calib)
    meta = load_seg_meta(path, check_files=False)
    made = ", ".join(["fp32", *meta.get("precisions", {})])
    click.echo(f"wrote {path}: {len(meta['classes']) - 1} classes, precisions {made}")


@main.command("segment")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--model",
    "bundle",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Segmentation bundle from `psa export-seg`.",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--split", default="val", show_default=True, help="Data-set split.")
@click.option(
    "--scales",
    default="1.0",
    show_default=True,
    help="Test-time scales, e.g. 1.0,0.75,1.25 (the mean softmax of every pass).",
)
@click.option("--flip", is_flag=True, help="Also run each scale's mirror image.")
@click.option("--crf", is_flag=True, help="Refine with a dense CRF (DeepLab's post-processing).")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    show_default=True,
)
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True
)
@click.option("--device", default="auto", show_default=True, help="onnxruntime: auto, cpu, cuda.")
@click.option("--overwrite", is_flag=True, help="Relabel images whose label map exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or provider line.")
@fail_fast_option
@friendly
def segment_cmd(
    source, bundle, out, split, scales, flip, crf, backend, precision, device, overwrite, quiet,
    fail_fast,
):  # fmt: skip
    """Label SOURCE (a data set's split, an image folder or one image) with the segmentation
    network of BUNDLE: one pass per image (torch-free). Writes OUT/<id>.png palette label maps
    and OUT/labels.jsonl, as `psa label`; `psa eval DATA --labels-dir OUT` scores them."""
    from psa_infer.datasets import resolve_source
    from psa_infer.segment import load_seg_meta, open_seg_bundle, segment_items

    try:
        factors = tuple(float(s) for s in scales.split(","))
    except ValueError:
        factors = ()
    if not factors or min(factors) <= 0:
        raise click.BadParameter(f"expected numbers > 0, got {scales!r}", param_hint="--scales")
    meta = load_seg_meta(bundle)
    items = resolve_source(source, meta["classes"], split, predict=True)
    providers, _ = _ort_providers(device) if backend == "onnxruntime" else ("auto", None)
    with open_seg_bundle(bundle, backend, providers, precision=precision) as opened:
        if not quiet:
            click.echo(f"{backend}: {opened.provider}; {precision} graph", err=True)
        stats = segment_items(
            opened, items, out, factors, flip, not quiet, fail_fast, overwrite, crf
        )  # fmt: skip
    _finish(stats, "to segment")


@main.command("build-engine")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="Which graphs to build: cam.onnx/aff.onnx, or the fp16/int8 variants that psa export "
    "--precision wrote (cam.fp16.onnx, ...). The walk (rw) is always FP32.",
)
@click.option(
    "--profile",
    "sides",
    metavar="MIN,OPT,MAX",
    default="32,448,1024",  # psa_infer.profiles.DEFAULT_SIDES (a test keeps them equal)
    show_default=True,
    callback=_image_sides,
    help="Sides in pixels of the images to label: the engines accept every H and W in "
    "[MIN, MAX] (the CAM engine at each scale of meta.json; inputs above 1024 px in the "
    "runtime's tiles).",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="TensorRT timing cache: read if present, written after the build.",
)
@click.option(
    "--workspace-gb",
    type=click.FloatRange(min=0.1),
    default=4.0,
    show_default=True,
    help="GPU memory TensorRT may use for tactics while building (less on a Jetson).",
)
@friendly
def build_engine_cmd(bundle, precision, sides, timing_cache, workspace_gb):
    """Build TensorRT engines (cam, aff, rw) for BUNDLE on this machine's GPU.

    Run it on the device that will label (a GPU server, a Jetson): an engine only runs with
    the TensorRT version (10.3 or later) and GPU model that built it. Each graph is built as
    it is, as a strongly typed network: precision comes from the graph (FP16 casts, INT8 Q/DQ
    nodes), not from builder flags. Writes <name>.engine (cam.fp16.engine, ... for a variant)
    and <name>.engine.json beside the ONNX files. Needs no PyTorch.
    """
    from export.engine import build_bundle_engines, bundle_builds
    from psa_infer.backends import import_tensorrt

    bundle_builds(bundle, precision, sides)  # bundle, variant and profile errors, GPU or not
    import_tensorrt()  # absent or older than 10.3: one line saying what to install
    paths = build_bundle_engines(bundle, precision, sides, timing_cache, workspace_gb)
    for p in paths:
        click.echo(f"wrote {p}")


def _int_list(ctx, param, value: str | None) -> tuple[int, ...] | None:
    """'224,448' → (224, 448); '' → () (the part is skipped)."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@main.command("calibrate")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--split",
    default="train",
    show_default=True,
    help="Images with image-level labels to calibrate on (not the ones you report on).",
)
@click.option("--labels", type=click.Path(exists=True, dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@friendly
def calibrate_cmd(bundle, data, split, labels, quiet):
    """Per-class thresholds for --predict-classes, from DATA's image-level labels.

    For each class, the score threshold with the best F1 of "class present" on DATA's
    images (a data set split, or a folder with a labels file) is written into BUNDLE's
    meta.json; `psa label --predict-classes` and the Python API use them unless
    --class-threshold is given. Torch-free. Prints the thresholds and F1 as JSON.
    """
    from psa_infer.bundle import open_bundle
    from psa_infer.datasets import resolve_source
    from psa_infer.thresholds import calibrate, write_thresholds

    with open_bundle(bundle, "onnxruntime", ["CPUExecutionProvider"]) as opened:
        samples = resolve_source(data, opened.classes, split, labels)
        report = calibrate(opened.labeler, samples, opened.classes, progress=not quiet)
    write_thresholds(bundle, report, f"{Path(data).resolve().name} split '{split}'")
    click.echo(json.dumps(report))


@main.command("bench")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default="benchmarks",
    show_default=True,
    help="Writes bench.json, bench.md and rw_scaling.png here.",
)
@click.option(
    "--sides",
    callback=_int_list,
    default="224,448,512,1024,2048",
    show_default=True,
    help="Image sides for the random-walk table.",
)
@click.option("--channels", callback=_int_list, default="3,21", show_default=True)
@click.option(
    "--methods",
    default="dense,numba,numpy,onnx",
    show_default=True,
    help="Random walks to time (dense = the reference's formulation, the baseline).",
)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--label-sides",
    callback=_int_list,
    default="448",
    show_default=True,
    help="Image sides for the labeling tables ('' skips them).",
)
@click.option(
    "--big-side",
    type=click.IntRange(0),
    default=2048,
    show_default=True,
    help="Side of the image labeled end to end for peak memory (0 skips it).",
)
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False),
    help="Time this exported bundle (default: untrained networks; timings do not depend on "
    "the weights).",
)
@click.option(
    "--dense-max-seconds",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="Skip the dense baseline where its O(N³) estimate exceeds this per run.",
)
@friendly
def bench_cmd(
    out, sides, channels, methods, repeats, label_sides, big_side, bundle, dense_max_seconds
):
    """Time the random walk (local vs the reference's dense form) and labeling (torch vs ONNX).

    Prints the tables and writes them to OUT/bench.json and OUT/bench.md, with
    OUT/rw_scaling.png (time and memory against image side). About 5–10 minutes on a 2-core
    CPU with the defaults.
    """
    from benchmarks.bench import run_bench
    from benchmarks.rw_bench import METHODS

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise click.BadParameter(
            f"expected some of {', '.join(METHODS)}, got {methods!r}", param_hint="--methods"
        )
    if not sides or min(sides) < 8:
        raise click.BadParameter(f"expected image sides >= 8, got {sides}", param_hint="--sides")
    if not channels or min(channels) < 3:
        # background + the two classes the benchmark image holds
        raise click.BadParameter(
            f"expected channel counts >= 3, got {channels}", param_hint="--channels"
        )
    run_bench(
        Path(out),
        sides=sides,
        channel_counts=channels,
        methods=chosen,
        repeats=repeats,
        label_sides=label_sides,
        big_side=big_side or None,
        bundle=Path(bundle) if bundle else None,
        dense_max_seconds=dense_max_seconds,
        echo=click.echo,
    )


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
@click.option("--seed", type=click.IntRange(0), help="Generator seed (default: recipe, 0).")
@click.option(
    "--style",
    type=click.Choice(DemoConfig.styles),
    help="Synthetic style, as psa make-synthetic --style (default: recipe, 'default').",
)
@click.option(
    "--seg/--no-seg",
    "segmentation",
    default=True,
    show_default=True,
    help="The paper's last step, where the labeled split has masks: train-seg on the walk + CRF "
    "labels of the training split and on its ground truth, scored on val (seg_miou, "
    "seg_full_miou; with the dense CRF seg_crf_miou, seg_full_crf_miou).",
)
@config_options
@friendly
def demo_cmd(out, num_images, seed, style, segmentation, config_path, sets):
    """Run the whole chain on fresh synthetic data on this machine and report mIoU.

    make-synthetic (the recipe's demo section) into --out/data, then the chain of `psa
    pipeline` on it: train-cam → make-cam → make-aff-labels → train-aff → label → eval, all
    under --out; writes overview.png (image | truth | CAM | random walk | + CRF). Then
    exports the models to --out/bundle and labels the val split again with the torch-free
    onnxruntime runtime. The last line printed is `RESULT {json}` with cam_miou, rw_miou,
    rw_crf_miou, ort_miou, ort_agreement and seconds (`psa pipeline --help` lists all).
    A re-run resumes; one with another recipe or seed is refused.
    """
    from psa_pipeline import load_recipe, run_demo

    extra = {"demo.num_images": num_images, "demo.seed": seed, "demo.style": style}
    overrides = [f"{k}={json.dumps(v)}" for k, v in extra.items() if v is not None]
    cfg = load_recipe(config_path, list(sets) + overrides)
    result = run_demo(Path(out), cfg, segmentation=segmentation)
    click.echo("RESULT " + json.dumps(result, sort_keys=True))


@main.command("pipeline")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    required=True,
    help="Everything the run makes goes here; a re-run resumes it.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    help="Image-level labels file (default: the data set's own).",
)
@click.option(
    "--seg/--no-seg",
    "segmentation",
    default=True,
    show_default=True,
    help="The paper's last step, where the labeled split has masks: train-seg on the walk + CRF "
    "labels of the training split and on its ground truth, scored on val (seg_miou, "
    "seg_full_miou; with the dense CRF seg_crf_miou, seg_full_crf_miou).",
)
@config_options
@friendly
def pipeline_cmd(data, out, labels, segmentation, config_path, sets):
    """Run the whole chain on the data set DATA: pseudo labels for its images in one command.

    DATA is a VOC layout (JPEGImages/, ImageSets/Segmentation/{train,val}.txt, masks where
    there are any) or a folder of images with labels.csv or labels.json. The recipe is the
    demo's (configs/synthetic_demo.yaml: MobileNetV2, ImageNet weights, a CPU's worth of
    epochs) unless --config names another.

    \b
    train-cam → make-cam → make-aff-labels → train-aff → label (walk; walk + CRF) → export
    → calibrate class thresholds → label with onnxruntime → eval → overview.png → (with
    --seg, the default, where the labeled split has masks) the training split labeled with
    walk + CRF → train-seg on those labels and on the ground truth → segment with each

    A VOC set trains on train and labels val (eval.split); a folder trains on every image
    (less the share train-cam and train-aff hold out to judge their networks) and labels every
    image. Under --out: labels/ (the walk's label PNGs), labels_crf/, labels_ort/ (the
    bundle's), cam/heldout.json and aff/heldout.json (the verdicts), bundle/ (meta.json holds
    the calibrated class thresholds). Every stage skips what exists, so a re-run resumes; a
    re-run on other data or with another recipe is refused.

    The last line printed is `RESULT {json}`: num_images, split, num_labeled, classifier,
    affinity, class_thresholds, ort_agreement, ort_seconds_per_image, evaluated, seconds, stages;
    predict_f1_val where the labeled split is not training data; and when every labeled
    image has a mask (evaluated: true) cam_miou, rw_miou, rw_crf_miou, ort_miou,
    cam_miou_best and cam_best_bg_threshold, as `psa demo` prints; with the last step
    seg_miou, seg_full_miou, seg_crf_miou, seg_full_crf_miou and seg_seconds_per_image.
    """
    from psa_pipeline import load_recipe, run_pipeline

    cfg = load_recipe(config_path, sets)
    result = run_pipeline(Path(data), Path(out), cfg, labels, segmentation=segmentation)
    click.echo("RESULT " + json.dumps(result, sort_keys=True))


@main.command("show")
@click.argument("labels_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--images",
    "-i",
    type=click.Path(exists=True),
    help="A data set (VOC layout, or a folder with a labels file: its masks are the ground "
    "truth), a folder of images matched to labels by file name, or one image. Default: the "
    "image paths in LABELS_DIR/labels.jsonl (written by psa label).",
)
@click.option(
    "--cams",
    "cam_dir",
    type=click.Path(exists=True, file_okay=False),
    help="CAM folder from make-cam: adds a column with the CAMs' maximum as a heat map.",
)
@click.option(
    "--truth",
    "truth_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Ground-truth label PNGs (<id>.png); default: the data set's masks, if any.",
)
@click.option(
    "--model",
    "bundle",
    type=click.Path(exists=True, file_okay=False),
    help="Take the class names from this bundle's meta.json (default: the data set's, "
    "else labels.jsonl's).",
)
@click.option(
    "--split",
    default="val",
    show_default=True,
    help="With a VOC data set as --images: show the label maps of this split.",
)
@click.option(
    "-n",
    "--num",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Rows: the first N label maps by id.",
)
@click.option("--ids", help="Comma-separated ids to show instead of the first N.")
@click.option(
    "--height", type=click.IntRange(32, 2048), default=200, show_default=True, help="Row height."
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    required=True,
    help="The picture to write (.png or .jpg).",
)
@friendly
def show_cmd(labels_dir, images, cam_dir, truth_dir, bundle, split, num, ids, height, out):
    """Draw a grid for the label maps in LABELS_DIR: image | labels | CAM | ground truth.

    Each row is one image: the image, its labels painted on it (class colours, white
    outlines), the CAM heat map (with --cams) and the ground truth (where known), then the
    names of the classes present. `psa label --overlay` writes one picture per image instead.
    """
    from psa_infer.show import show_grid, show_rows
    from psa_infer.visualize import save_picture

    if Path(out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise click.BadParameter(f"expected a .png or .jpg file, got {out!r}", param_hint="-o")
    classes = None
    if bundle:
        from psa_infer.bundle import load_meta

        classes = load_meta(bundle, check_files=False)["classes"]
    chosen = [i.strip() for i in (ids or "").split(",") if i.strip()] or None
    shown = show_rows(
        labels_dir,
        images,
        cam_dir=cam_dir,
        truth_dir=truth_dir,
        classes=classes,
        split=split,
        ids=chosen,
        limit=num,
    )
    save_picture(out, show_grid(shown, height))
    k = shown.not_in_source
    note = f"; {k} label map{'s' * (k != 1)} of images not in --images left out" * bool(k)
    n = len(shown.rows)
    click.echo(f"wrote {out} ({n} image{'s' * (n != 1)}{note})")


if __name__ == "__main__":
    sys.exit(main())
