"""`psa label --engine ray`: a local Ray with 2 CPUs labels like the local loop, byte for byte.

One Ray is started for the module (~5 s) and every run here uses it. The killed-worker test
sends SIGKILL to an actor's own process in the middle of its work (once: a marker file says it
happened) and checks that Ray restarted it and that the output is still complete and identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import ray  # the dev extra installs the ray extra: these tests run wherever the suite does
from click.testing import CliRunner
from PIL import Image

from cli import main
from tests.conftest import write_voc


@pytest.fixture(scope="module")
def local_ray():
    from ray import cloudpickle

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # KillOnce travels by value
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_bundle):
    """18 images of 3 sizes in a VOC layout (the tiny bundle's classes), one of them corrupt."""
    root = tmp_path_factory.mktemp("raydata") / "voc"
    ids = write_voc(root, n=18, size=(40, 52), classes=tiny_bundle.classes)
    rng = np.random.default_rng(3)
    for k, iid in enumerate(ids):
        h, w = (40, 52) if k % 3 == 0 else (56, 48) if k % 3 == 1 else (64, 72)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{iid}.jpg", quality=90)
        mask = np.zeros((h, w), np.uint8)
        mask[4:20, 6:30] = k % 2 + 1
        from psa_infer.palette import save_label_png

        save_label_png(root / "SegmentationClass" / f"{iid}.png", mask)
    (root / "JPEGImages" / f"{ids[4]}.jpg").write_bytes(b"not a jpeg")
    (root / "ImageSets/Segmentation/all.txt").write_text("\n".join(ids) + "\n")
    return root


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".jpg")
    }


def _records(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def _label(bundle, data, out, *extra) -> tuple[int, dict, str]:
    args = ["label", str(data), "--backend", "onnxruntime", "--model", str(bundle)]
    r = CliRunner().invoke(main, [*args, "-o", str(out), "--split", "all", "-q", *extra])
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "{}"
    return r.exit_code, json.loads(last), r.stderr


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_bundle, photos):
    out = tmp_path_factory.mktemp("local") / "out"
    code, stats, _ = _label(tiny_bundle.bundle, photos, out, "--overlay")
    assert code == 3 and stats["labeled"] == 17 and stats["failed"] == 1
    return out


def test_ray_writes_the_local_runs_files(local_ray, tiny_bundle, photos, local_run, tmp_path):
    out = tmp_path / "ray"
    code, stats, err = _label(
        tiny_bundle.bundle, photos, out, "--overlay", "--engine", "ray", "--actors", "2"
    )
    assert code == 3, err  # the corrupt image, as in the local run
    counts = (stats["engine"], stats["actors"], stats["labeled"], stats["failed"])
    assert counts == ("ray", 2, 17, 1)
    assert _files(out) == _files(local_run)  # label maps and overlays, byte for byte
    assert len(_files(out)) == 34
    assert _records(out) == _records(local_run)  # same rows, same order, bar the timings
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    local = [json.loads(x) for x in (local_run / "failures.jsonl").read_text().splitlines()]
    assert failures == local and failures[0]["id"] == "img_004"


def test_ray_resumes_by_skipping_finished_ids(local_ray, tiny_bundle, photos, local_run, tmp_path):
    out = tmp_path / "ray"
    shutil.copytree(local_run, out)
    gone = sorted(out.glob("img_01*.png"))[:3]
    for p in gone:
        p.unlink()
    code, stats, err = _label(tiny_bundle.bundle, photos, out, "--engine", "ray")
    assert code == 3, err  # the corrupt image is tried again, and fails again
    assert (stats["labeled"], stats["skipped"], stats["failed"]) == (3, 14, 1)
    assert {k: v for k, v in _files(out).items() if k.endswith(".png")} == {
        k: v for k, v in _files(local_run).items() if k.endswith(".png")
    }
    assert [r["id"] for r in _records(out)] == [r["id"] for r in _records(local_run)]


class KillOnce:
    """Opens the bundle as the CLI's opener does; the first actor to reach its third image
    SIGKILLs its own process (once for the whole run: the marker file remembers)."""

    def __init__(self, opener, marker: str, at: int = 3) -> None:
        self.opener, self.marker, self.at = opener, marker, at

    def __call__(self, threads: int):
        bundle = self.opener(threads)
        label, seen = bundle.labeler.label, [0]

        def label_or_die(*args, **kwargs):
            seen[0] += 1
            if seen[0] == self.at:
                try:
                    fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass  # killed once already
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)
            return label(*args, **kwargs)

        bundle.labeler.label = label_or_die
        return bundle


def test_a_killed_actor_is_restarted_and_the_output_is_complete(
    local_ray, tiny_bundle, photos, local_run, tmp_path
):
    from psa_infer.datasets import resolve_source
    from psa_infer.pipeline import LabelJob
    from psa_infer.ray_engine import BundleOpener, label_on_ray

    classes = list(tiny_bundle.classes)
    items = resolve_source(photos, classes, "all", None, [], False)
    out, marker = tmp_path / "ray", tmp_path / "killed"
    job = LabelJob(out, class_names=classes, info={"backend": "onnxruntime", "walk": "auto"})
    opener = KillOnce(BundleOpener(str(tiny_bundle.bundle)), str(marker))
    stats = label_on_ray(opener, job, items, actors=2, progress=False)
    assert marker.exists()  # an actor was killed mid-run ...
    killed = int(marker.read_text())
    assert killed != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # ... and that process is gone
    assert (stats["labeled"], stats["failed"]) == (17, 1)  # ... yet every image was labeled
    local = {k: v for k, v in _files(local_run).items() if k.endswith(".png")}
    assert _files(out) == local
    assert _records(out) == [r for r in _records(local_run)]


def test_ray_refuses_what_it_cannot_do(tiny_bundle, photos, tmp_path):
    base = ["label", str(photos), "-o", str(tmp_path / "o"), "--engine", "ray"]
    cases = [
        (["--cam", str(tiny_bundle.cam), "--aff", str(tiny_bundle.aff)], "--engine ray labels"),
        (
            ["--backend", "onnxruntime", "--model", str(tiny_bundle.bundle), "--shard", "0/2"],
            "drop --shard",
        ),
    ]
    for extra, message in cases:
        r = CliRunner().invoke(main, base + extra)
        assert r.exit_code == 2 and message in r.stderr, r.stderr
    local = ["label", str(photos), "-o", str(tmp_path / "o"), "--address", "auto"]
    r = CliRunner().invoke(
        main, local + ["--backend", "onnxruntime", "--model", str(tiny_bundle.bundle)]
    )
    assert r.exit_code == 2 and "--engine ray" in r.stderr
    assert not (tmp_path / "o").exists()


class Unopenable:
    """An opener that fails as open_bundle does on a machine that cannot run the bundle."""

    def __call__(self, threads: int):
        from psa_infer.bundle import BundleError

        raise BundleError("cam.engine: no such engine (run psa build-engine on this machine)")


def test_a_bundle_no_actor_can_open_stops_the_run_in_one_line(
    local_ray, tiny_bundle, photos, tmp_path
):
    from psa_infer.datasets import resolve_source
    from psa_infer.errors import PsaError
    from psa_infer.pipeline import LabelJob
    from psa_infer.ray_engine import label_on_ray

    items = resolve_source(photos, list(tiny_bundle.classes), "all", None, [], False)
    job = LabelJob(tmp_path / "out", class_names=list(tiny_bundle.classes))
    with pytest.raises(PsaError, match="a Ray actor could not open the bundle: cam.engine"):
        label_on_ray(Unopenable(), job, items, actors=1, progress=False)  # not a restart loop
    assert not list((tmp_path / "out").glob("*.png"))


def test_an_actor_pool_the_cluster_cannot_hold_is_refused(local_ray):
    from psa_infer.errors import PsaError
    from psa_infer.ray_engine import check_resources

    check_resources(local_ray, 2, 1, 0)  # the 2 CPUs of the fixture's Ray
    with pytest.raises(PsaError, match="each needs a GPU here, and the Ray cluster has 0"):
        check_resources(local_ray, 1, 1, 1)
    with pytest.raises(PsaError, match=r"--actors 2 x --threads 2 = 4 CPUs, and the Ray cluster"):
        check_resources(local_ray, 2, 2, 0)
