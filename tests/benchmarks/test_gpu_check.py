"""The GPU acceptance script's CPU-side parts: the no-CUDA exit, the time budget, the summaries."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import gpu_check
from benchmarks.gpu_check import Budget, Skip, agreement, stage_medians


def test_without_cuda_it_says_so_in_one_line_and_exits_2(monkeypatch, capsys, tmp_path):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == gpu_check.NO_CUDA == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device found (torch ")
    assert not out.exists()  # nothing ran, nothing written


def test_budget_records_ok_failed_skipped_and_stops_at_the_deadline():
    now = [0.0]
    budget = Budget(10, clock=lambda: now[0])

    def slow():
        now[0] += 7
        return {"x": 1}

    def no_trt():
        raise Skip("TensorRT is not installed")

    assert budget.run("a", slow) == {"x": 1}
    assert budget.run("b", lambda: 1 / 0) is None
    assert budget.run("c", no_trt) is None
    now[0] += 5  # past the deadline: what is left does not start
    assert budget.run("d", slow) is None
    assert budget.steps == {
        "a": {"status": "ok", "seconds": 7.0, "x": 1},
        "b": {"status": "failed", "error": "ZeroDivisionError: division by zero"},
        "c": {"status": "skipped", "reason": "TensorRT is not installed"},
        "d": {"status": "skipped", "reason": "time budget spent"},
    }
    assert budget.failed and now[0] == 12  # d never ran


def test_stage_medians_and_agreement():
    times = [{"cam": 1.0, "walk": 0.5}, {"cam": 3.0, "walk": 0.1}, {"cam": 2.0, "walk": 0.2}]
    assert stage_medians(times) == {"cam": 2.0, "walk": 0.2, "total": 2.2}
    a = [np.zeros((2, 2), np.uint8), np.ones((1, 4), np.uint8)]
    b = [np.zeros((2, 2), np.uint8), np.array([[1, 1, 0, 1]], np.uint8)]
    assert agreement(a, b) == 7 / 8
