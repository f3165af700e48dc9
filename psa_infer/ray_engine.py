"""Labeling on Ray (``psa label --engine ray``): the same run as the local loop, spread over actors.

A Ray Data pipeline: the samples still to do → ``map`` into a pool of actors, each holding one
opened bundle (one ONNX Runtime session per model, ``threads`` intra-op threads and as many walk
threads; one GPU per actor under TensorRT), which read the image, label it and draw its overlay
(``LabelJob.compute``) → back to this process, which writes every file (``LabelJob.write``).
Writing stays with the driver, so a Ray run leaves exactly the files of a local run: the same
label PNGs byte for byte, the same overlays, ``labels.jsonl`` in the samples' order (its
``seconds`` are each run's own) and ``failures.jsonl``.

Ray does the scheduling: an actor that dies (a killed process, a lost node) is restarted and
its unfinished rows run again (Ray Data's actors retry without limit by default); a row's result
reaches the driver once. A re-run skips the ids whose files exist, as locally, so a killed driver
resumes too. Nothing here imports torch; Ray is imported only when this engine runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psa_infer.artifacts import ArtifactError
from psa_infer.datasets import DataError, Sample
from psa_infer.errors import PsaError
from psa_infer.pipeline import RECORDS, Labeled, LabelJob, _Records, finish_stats
from psa_infer.runs import FAILURES, write_failures

INSTALL = "Ray is not installed: pip install 'psa-affinity[ray]'"


@dataclass(frozen=True)
class BundleOpener:
    """Opens a bundle inside an actor (picklable: only paths and settings travel)."""

    bundle: str
    backend: str = "onnxruntime"
    providers: str | tuple[str, ...] = "auto"
    walk: str = "auto"
    precision: str = "fp32"
    device_id: int | None = None

    def __call__(self, threads: int):
        from psa_infer.bundle import open_bundle

        providers = self.providers if isinstance(self.providers, str) else list(self.providers)
        return open_bundle(
            self.bundle,
            self.backend,
            providers,
            self.walk,
            threads=threads,
            precision=self.precision,
            device_id=self.device_id,
        )


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise PsaError(INSTALL) from e
    return ray


def _encode(result: Labeled) -> dict:
    """A Labeled as a row of plain columns (bytes and JSON) for Ray's object store."""

    def array(a: np.ndarray | None) -> tuple[bytes, str]:
        if a is None:
            return b"", ""
        return np.ascontiguousarray(a).tobytes(), json.dumps(list(a.shape))

    label, label_shape = array(result.label)
    picture, picture_shape = array(result.overlay)
    return {
        "label": label,
        "label_shape": label_shape,
        "record": json.dumps(result.record) if result.record is not None else "",
        "overlay": picture,
        "overlay_shape": picture_shape,
    }


def _decode(row: dict) -> Labeled:
    def array(data: bytes, shape: str) -> np.ndarray | None:
        if not shape:
            return None
        return np.frombuffer(data, np.uint8).reshape(json.loads(shape)).copy()

    record = json.loads(row["record"]) if row["record"] else None
    return Labeled(
        array(row["label"], row["label_shape"]),
        record,
        array(row["overlay"], row["overlay_shape"]),
    )


def _sample_row(s: Sample) -> dict:
    return {
        "id": s.id,
        "image": str(Path(s.image).resolve()),  # actors may run in another folder
        "labels": json.dumps(list(s.labels)) if s.labels is not None else "",
    }


def _row_sample(row: dict) -> Sample:
    labels = tuple(json.loads(row["labels"])) if row["labels"] else None
    return Sample(row["id"], Path(row["image"]), None, labels)


_EMPTY = {"label": b"", "label_shape": "", "record": "", "overlay": b"", "overlay_shape": ""}


class _LabelActor:
    """One opened bundle per actor; labels the rows it is given (``LabelJob.compute``).

    A bundle that cannot be opened here (a missing engine, a GPU TensorRT cannot use) is not
    raised from the constructor, where Ray would restart the actor again and again: every row
    then carries the message as ``fatal`` and the driver stops with it.
    """

    def __init__(self, opener: Callable[[int], object], job: LabelJob, threads: int) -> None:
        # The compiled walk reads its thread count when it first runs; Ray already limits
        # OMP_NUM_THREADS to the actor's CPUs.
        os.environ["PSA_RW_THREADS"] = str(threads)
        self.fatal = ""
        try:
            self.bundle = opener(threads)
        except PsaError as e:
            self.fatal = f"a Ray actor could not open the bundle: {e}"
            return
        info = {**(job.info or {}), "walk": self.bundle.walk}  # "auto" resolved here
        self.job = dataclasses.replace(job, info=info)

    def __call__(self, row: dict) -> dict:
        s = _row_sample(row)
        if self.fatal:
            return {"id": s.id, "fatal": self.fatal, "error": "", **_EMPTY}
        try:
            out = {"error": "", **_encode(self.job.compute(self.bundle.labeler, s))}
        except (DataError, ArtifactError) as e:  # about this image: the run goes on
            out = {"error": str(e), **_EMPTY}
        return {"id": s.id, "fatal": "", **out}


def check_resources(ray, actors: int, threads: int, gpus: float) -> None:
    """The cluster can hold the actor pool (Ray would otherwise wait for it for ever)."""
    have = ray.cluster_resources()
    cpus, gpus_have = have.get("CPU", 0), have.get("GPU", 0)
    if gpus and gpus_have < actors * gpus:
        raise PsaError(
            f"--actors {actors}: each needs a GPU here, and the Ray cluster has "
            f"{gpus_have:g}"
            + (" (TensorRT and --device cuda run on GPUs)" if not gpus_have else "")
        )
    if cpus < actors * threads:
        raise PsaError(
            f"--actors {actors} x --threads {threads} = {actors * threads} CPUs, and the Ray "
            f"cluster has {cpus:g}"
        )


def start_ray(address: str | None, cpus: int, quiet: bool = True):
    """Connect to the Ray cluster at ``address`` ("auto": the one this machine belongs to), or
    start a local one with ``cpus`` CPUs; an already initialised Ray is used as it is."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False}
    if quiet:  # our progress bar and one line per failure; Ray's own chatter only on errors
        kwargs.update(log_to_driver=False, logging_level="ERROR")
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=cpus, **kwargs)
    except ConnectionError as e:
        raise PsaError(f"--address {address}: no Ray cluster there ({e})") from e
    return ray


def label_on_ray(
    opener: Callable[[int], object],
    job: LabelJob,
    items: Sequence[Sample],
    *,
    actors: int = 1,
    threads: int = 1,
    gpus: float = 0,
    address: str | None = None,
    fail_fast: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> dict:
    """Label ``items`` with ``actors`` Ray actors, each opening its own bundle with
    ``opener(threads)``, and write every file here through ``job``.

    ``gpus``: GPUs per actor (1 for TensorRT). ``address``: the Ray cluster (None: a local Ray
    with ``actors × threads`` CPUs). Returns the counts of ``psa_infer.pipeline.label_items``
    plus ``engine``, ``actors`` and ``threads``.
    """
    from tqdm import tqdm

    if actors < 1 or threads < 1:
        raise PsaError(f"actors and threads: expected integers >= 1, got {actors}, {threads}")
    _import_ray()  # before anything is written
    samples = list(items)
    by_id = {s.id: s for s in samples}
    todo = [s for s in samples if not job.is_done(s)]
    records = _Records(job.out_dir / RECORDS, order=[s.id for s in samples])
    failures_path = job.out_dir / FAILURES
    # Actors run elsewhere (another folder, on a cluster another machine sharing the files).
    cam_dir = Path(job.cam_dir).resolve() if job.cam_dir is not None else None
    job = dataclasses.replace(job, out_dir=job.out_dir.resolve(), cam_dir=cam_dir)
    failures: list[dict] = []
    done = overlays_only = 0
    first = None  # seconds until the first image came back: Ray's and the actors' start
    t0 = time.perf_counter()
    job.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if todo:
            ray = start_ray(address, actors * threads)
            check_resources(ray, actors, threads, gpus)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the bar below counts written images
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            ds = ray.data.from_items([_sample_row(s) for s in todo]).map(
                _LabelActor,
                fn_constructor_args=(opener, job, threads),
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=threads,
                num_gpus=gpus or None,
            )
            bar = tqdm(total=len(todo), desc="label", disable=not progress, file=sys.stderr)
            try:
                for row in ds.iter_rows():
                    first = first if first is not None else time.perf_counter() - t0
                    bar.update(1)
                    s = by_id[row["id"]]
                    if row["fatal"]:
                        raise PsaError(row["fatal"])
                    if row["error"]:
                        if fail_fast:
                            raise DataError(row["error"])
                        failures.append({"id": s.id, "image": str(s.image), "error": row["error"]})
                        tqdm.write(f"label: {s.id} failed: {row['error']}", file=sys.stderr)
                        continue
                    result = _decode(row)
                    overlays_only += result.label is None
                    job.write(s, result, records, verbose)
                    done += 1
            finally:
                bar.close()
    finally:
        records.close()
    failures_file = write_failures(failures_path, failures)
    seconds = time.perf_counter() - t0
    stats = {
        "done": done,
        "skipped": len(samples) - len(todo),
        "failed": len(failures),
        "failures_file": failures_file,
        "seconds": seconds,
        "seconds_per_image": seconds / max(done, 1),
    }
    return {
        **finish_stats(stats, records, overlays_only),
        "engine": "ray",
        "actors": actors,
        "threads": threads,
        "first_image_seconds": first,
    }
