"""The segmentation network against the labeling chain, per image, ONNX Runtime on this CPU.

    python -m benchmarks.seg_bench [--side 448] [--repeats 3] [--bundle DIR] [--seg-bundle DIR]

Both run on the same image (``label_bench.bench_image``, 2 present classes) at the same size:
the chain is ``Bundle.label`` of a labeling bundle (CAMs at every scale of its meta.json with
flip, AffinityNet, the walk, upsampling; and again with the dense CRF where pydensecrf is
installed), the network ``SegBundle.segment`` of a segmentation bundle (one pass of seg.onnx,
argmax). Without bundles, untrained ones are exported (timings do not depend on the weights):
the labeling bundle of ``label_bench.make_bundle`` and a SegNet with the demo recipe's backbone
and head (configs/synthetic_demo.yaml, ``train_seg``: the stride-16 network the demo trains).
Medians of ``repeats``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import psa_train  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads; imports no torch)
from benchmarks.label_bench import NUM_CLASSES, bench_image, has_crf, make_bundle
from benchmarks.report import Table, cpus, to_text

TARGET_RATIO = 10.0  # issue 13: seg.onnx per image at least 10x faster than the chain


def make_seg_bundle(work_dir: Path, backbone: str | None = None) -> Path:
    """An untrained SegNet (the demo recipe's backbone, or ``backbone``, and head) exported to
    ``work_dir/seg_bundle``."""
    import torch

    from export.seg_bundle import export_seg_bundle
    from psa_pipeline import load_recipe
    from psa_train.checkpoint import save_checkpoint
    from psa_train.train_seg import build_seg_model

    ts = load_recipe(None).train_seg
    backbone = backbone or ts.backbone
    head = {"rates": list(ts.head_rates), "width": ts.head_width, "dropout": ts.head_dropout,
            "context": ts.head_context, "skip": ts.head_skip}  # fmt: skip
    classes = ["background", *(f"class{i}" for i in range(1, NUM_CLASSES + 1))]
    torch.manual_seed(0)
    net = build_seg_model(backbone, None, NUM_CLASSES, head)
    meta = {"kind": "seg", "backbone": backbone, "classes": classes, "head": head,
            "mean": list(ts.mean), "std": list(ts.std)}  # fmt: skip
    ckpt = save_checkpoint(work_dir / "seg", net.state_dict(), meta)
    return export_seg_bundle(ckpt, work_dir / "seg_bundle")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: session allocation, first-shape planning
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def run_seg_bench(
    work_dir: Path,
    side: int = 448,
    repeats: int = 3,
    bundle: Path | None = None,
    seg_bundle: Path | None = None,
) -> tuple[list[Table], dict]:
    """Seconds per image of the labeling chain and of seg.onnx at ``side``²; (tables, raw)."""
    from psa_infer.bundle import open_bundle
    from psa_infer.segment import open_seg_bundle

    work_dir.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle) if bundle else make_bundle(work_dir)
    seg_bundle = Path(seg_bundle) if seg_bundle else make_seg_bundle(work_dir)
    img, keys = bench_image(side)
    threads = cpus()
    raw: dict = {"side": side, "threads": threads, "bundle": str(bundle), "seg": str(seg_bundle)}
    with (
        open_bundle(bundle, threads=threads) as chain,
        open_seg_bundle(seg_bundle, threads=threads) as seg,
    ):
        raw["seg_s"] = _median_seconds(lambda: seg.segment(img), repeats)
        raw["chain_s"] = _median_seconds(lambda: chain.labeler.label(img, keys), repeats)
        if has_crf():
            raw["chain_crf_s"] = _median_seconds(
                lambda: chain.labeler.label(img, keys, crf=True), repeats
            )
        raw["scales"], raw["flip"] = chain.meta["scales"], chain.meta["flip"]
    rows = [["labeling chain (CAMs + AffinityNet + walk)", raw["chain_s"], 1.0]]
    if "chain_crf_s" in raw:
        rows.append(["labeling chain + dense CRF", raw["chain_crf_s"], None])
    raw["ratio"] = raw["chain_s"] / raw["seg_s"]
    raw["ratio_crf"] = raw["chain_crf_s"] / raw["seg_s"] if "chain_crf_s" in raw else None
    rows.append(["seg.onnx (one pass + argmax)", raw["seg_s"], raw["ratio"]])
    if raw["ratio_crf"] is not None:
        rows[1][2] = raw["chain_s"] / raw["chain_crf_s"]
    table = Table(
        title=f"Segmentation network vs labeling chain, {side}² image, ONNX Runtime CPU",
        columns=["what", "seconds / image", "× faster than the chain"],
        rows=rows,
        notes=[
            f"{threads} threads; chain: scales {raw['scales']}, flip {raw['flip']}, numpy walk; "
            f"target: seg.onnx >= {TARGET_RATIO:.0f}x faster than the chain (without CRF)"
        ],
    )
    return [table], raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--seg-bundle", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/psa-seg-bench"))
    args = ap.parse_args()
    tables, raw = run_seg_bench(args.work, args.side, args.repeats, args.bundle, args.seg_bundle)
    for t in tables:
        print(to_text(t))
    print(json.dumps(raw))


if __name__ == "__main__":
    main()
