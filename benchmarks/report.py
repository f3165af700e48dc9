"""Bench tables: one format for the terminal, Markdown and JSON, with the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Table:
    """A titled table: ``rows`` hold numbers, strings or None (shown as '—'); notes follow it."""

    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def cell(x, digits: int = 3) -> str:
    """Numbers to at most ``digits`` significant decimals, None → '—'."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 1e-2:
            return f"{x:.{digits}g}"
        return f"{x:.1e}"
    return str(x)


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    if table.notes:
        lines.append("")
        lines.extend(f"- {n}" for n in table.notes)
    return "\n".join(lines) + "\n"


def to_text(table: Table) -> str:
    """Aligned plain-text table for the terminal."""
    cells = [table.columns] + [[cell(x) for x in row] for row in table.rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    out = [table.title, "-" * len(table.title)]
    # Text columns flush left, numeric ones flush right.
    text = [any(isinstance(row[i], str) for row in table.rows) for i in range(len(table.columns))]
    for r in cells:
        just = [c.ljust(w) if t else c.rjust(w) for c, w, t in zip(r, widths, text, strict=True)]
        out.append("  ".join(just).rstrip())
    out.extend(f"  * {n}" for n in table.notes)
    return "\n".join(out) + "\n"


def machine() -> dict:
    """What the numbers came from: CPU model, cores usable, memory, Python and library versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": cpus()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "onnxruntime", "numba", "torch"):
        if mod in sys.modules:
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    info["versions"] = versions
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if gpu.returncode == 0 and gpu.stdout.strip():
            info["gpu"] = gpu.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def cpus() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def proc_status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``); None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_report(out_dir: Path, tables: list[Table], info: dict, raw: dict) -> tuple[Path, Path]:
    """``bench.json`` (machine, tables, raw measurements) and ``bench.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "bench.json"
    md = out_dir / "bench.md"
    js.write_text(
        json.dumps({"machine": info, "tables": [asdict(t) for t in tables], "raw": raw}, indent=1)
    )
    head = ["# psa bench", ""]
    head.append(
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("versions",))
        + "; "
        + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    )
    md.write_text("\n".join(head) + "\n\n" + "\n".join(to_markdown(t) for t in tables))
    return js, md
