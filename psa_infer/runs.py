"""One loop for the stages that write a file per image (label, make-cam, make-aff-labels).

Each image is either already done (its files exist: skipped, so a re-run resumes), done now,
or failed with an error about its own files (``DataError``: a corrupt image, one over the
pixel limit; ``ArtifactError``: a CAM file of another image). A failure does not stop the
others: it is reported on stderr as it happens and listed in ``<out>/failures.jsonl``
(``{"id", "image", "error"}`` per line), and the returned counts say how many failed, so the
CLI can exit with a status that says so. ``fail_fast`` stops at the first failure instead.
Any other error — a bad setting, an environment variable, a bug — is not about one image and
stops the run at once.

``workers`` > 1 runs ``work`` in that many worker processes (for work that holds the GIL, as
the dense CRF does); ``work`` must then pickle (a module-level function, or a
``functools.partial`` of one), and the counts, failures and files are what one process makes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

from psa_infer.artifacts import ArtifactError
from psa_infer.datasets import DataError, Sample
from psa_infer.errors import PsaError
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
    workers: int = 1,
) -> dict:
    """Run ``work`` on every sample that ``is_done`` does not report finished.

    Returns ``{"done", "skipped", "failed", "failures_file", "seconds", "seconds_per_image"}``;
    ``failures_file`` is the path of ``failures_name`` in ``out_dir`` when something failed,
    else None (and an older failures file from an earlier run is removed). Processes that
    share ``out_dir`` (shards) each need a ``failures_name`` of their own. ``workers``: worker
    processes for ``work`` (1: this process; see the module's docstring).
    """
    from tqdm import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PsaError(f"workers: expected an integer >= 1, got {workers!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = skipped = 0
    failures: list[dict] = []
    t0 = time.perf_counter()
    with tqdm(total=len(samples), desc=desc, disable=not progress, file=sys.stderr) as bar:
        pending = []
        for s in samples:
            if is_done(s):
                skipped += 1
                bar.update()
            else:
                pending.append(s)
        with _Workers(work, min(workers, len(pending))) as results:
            for s, error in zip(pending, results(pending), strict=True):
                bar.update()
                if error is not None:
                    if fail_fast:
                        raise error
                    failures.append({"id": s.id, "image": str(s.image), "error": str(error)})
                    tqdm.write(f"{desc}: {s.id} failed: {error}", file=sys.stderr)
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


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _guarded(work: Callable[[Sample], None], s: Sample) -> Exception | None:
    """``work(s)``; an error about the sample's own files is returned, anything else raised."""
    try:
        work(s)
    except (DataError, ArtifactError) as e:
        return e
    return None


def _worker_start(parent: int) -> None:
    """In each worker: Ctrl-C is the parent's to handle (it stops the run; a worker finishes
    its image), and a worker whose parent is gone (killed) exits within a second instead of
    waiting for work forever."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class _Workers:
    """``with _Workers(work, n) as results``: ``results(samples)`` yields ``_guarded(work, s)``
    for each sample in order — here when ``n`` <= 1, else from ``n`` worker processes (started
    fresh, not forked: the caller may hold torch's thread pools). Leaving the block closes them;
    leaving it by an error cancels the images not started."""

    def __init__(self, work: Callable[[Sample], None], n: int):
        self.work, self.n, self.pool = work, n, None

    def __enter__(self) -> Callable[[Sequence[Sample]], Iterator[Exception | None]]:
        if self.n <= 1:
            return lambda samples: (_guarded(self.work, s) for s in samples)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(
            self.n,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(os.getpid(),),
        )
        return self._results

    def _results(self, samples: Sequence[Sample]) -> Iterator[Exception | None]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            yield from self.pool.map(partial(_guarded, self.work), samples)
        except BrokenProcessPool:
            raise PsaError(
                f"a worker process died (killed, or out of memory: {self.n} workers hold "
                f"{self.n} images at once); run again with fewer workers"
            ) from None

    def __exit__(self, error_type, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=error_type is None, cancel_futures=True)


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
