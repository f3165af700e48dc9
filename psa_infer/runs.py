"""One loop for the stages that write a file per image (label, make-cam, make-aff-labels).

Each image is either already done (its files exist: skipped, so a re-run resumes), done now,
or failed with an error about its own files (``DataError``: a corrupt image, one over the
pixel limit; ``ArtifactError``: a CAM file of another image). A failure does not stop the
others: it is reported on stderr as it happens and listed in ``<out>/failures.jsonl``
(``{"id", "image", "error"}`` per line), and the returned counts say how many failed, so the
CLI can exit with a status that says so. ``fail_fast`` stops at the first failure instead.
Any other error — a bad setting, an environment variable, a bug — is not about one image and
stops the run at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from psa_infer.artifacts import ArtifactError
from psa_infer.datasets import DataError, Sample
from psa_infer.palette import atomic_path

FAILURES = "failures.jsonl"


def run_items(
    samples: Sequence[Sample],
    out_dir: str | os.PathLike,
    is_done: Callable[[Sample], bool],
    work: Callable[[Sample], None],
    *,
    desc: str,
    fail_fast: bool = False,
    progress: bool = True,
    failures_name: str = FAILURES,
) -> dict:
    """Run ``work`` on every sample that ``is_done`` does not report finished.

    Returns ``{"done", "skipped", "failed", "failures_file", "seconds", "seconds_per_image"}``;
    ``failures_file`` is the path of ``failures_name`` in ``out_dir`` when something failed,
    else None (and an older failures file from an earlier run is removed). Processes that
    share ``out_dir`` (shards) each need a ``failures_name`` of their own.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = skipped = 0
    failures: list[dict] = []
    t0 = time.perf_counter()
    for s in tqdm(samples, desc=desc, disable=not progress, file=sys.stderr):
        if is_done(s):
            skipped += 1
            continue
        try:
            work(s)
        except (DataError, ArtifactError) as e:
            if fail_fast:
                raise
            failures.append({"id": s.id, "image": str(s.image), "error": str(e)})
            tqdm.write(f"{desc}: {s.id} failed: {e}", file=sys.stderr)
            continue
        done += 1
    seconds = time.perf_counter() - t0
    return {
        "done": done,
        "skipped": skipped,
        "failed": len(failures),
        "failures_file": write_failures(out_dir / failures_name, failures),
        "seconds": seconds,
        "seconds_per_image": seconds / max(done, 1),
    }


def write_failures(path: Path, failures: Sequence[dict]) -> str | None:
    """Write ``failures`` (``{"id", "image", "error"}`` each) to ``path`` atomically and return
    it; with none, remove an older file of an earlier run and return None."""
    if failures:
        tmp = atomic_path(path)
        tmp.write_text("".join(json.dumps(f) + "\n" for f in failures), encoding="utf-8")
        os.replace(tmp, path)
        return str(path)
    if path.exists():
        path.unlink()
    return None
