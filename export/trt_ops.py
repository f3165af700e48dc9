"""Which ONNX operators TensorRT's ONNX parser supports, and which nodes of a model it would not.

TensorRT cannot run on a CPU-only machine, so the tests check every exported graph against the
operator list kept in ``export/tensorrt_onnx_ops.txt`` (its header cites the onnx-tensorrt
support matrices it was read from). A node passes when its operator is in the default ONNX
domain, supported by every TensorRT version listed there, and not excluded by the project.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnx

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")
_VERSION = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class OpSupport:
    """One line of the list: the TensorRT versions that parse ``op_type``, and why we refuse it."""

    op_type: str
    versions: frozenset[str]
    excluded: str | None = None


def parse_ops_file(text: str) -> dict[str, OpSupport]:
    """Parse the list format: ``<op_type> <version>... [exclude: <why>]``, ``#`` comments."""
    ops: dict[str, OpSupport] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, why = line.partition("exclude:")
        op_type, *versions = head.split() or [""]
        bad = [v for v in versions if not _VERSION.match(v)]
        if not op_type or not versions or bad or op_type in ops:
            raise ValueError(
                f"{OPS_FILE.name}:{lineno}: expected '<op_type> <version>...', got {raw!r}"
            )
        ops[op_type] = OpSupport(op_type, frozenset(versions), why.strip() or None)
    return ops


@cache
def load_ops(path: Path = OPS_FILE) -> dict[str, OpSupport]:
    """The operator list shipped with the package (parsed once)."""
    return parse_ops_file(Path(path).read_text(encoding="utf-8"))


def all_versions(ops: dict[str, OpSupport] | None = None) -> frozenset[str]:
    """Every TensorRT version that the list covers, e.g. {'8.5', '10.15'}."""
    ops = load_ops() if ops is None else ops
    return frozenset().union(*(s.versions for s in ops.values()))


def supported_ops(versions: frozenset[str] | None = None) -> frozenset[str]:
    """Operators supported by every one of ``versions`` (default: all listed) and not excluded."""
    ops = load_ops()
    versions = all_versions(ops) if versions is None else frozenset(versions)
    return frozenset(k for k, s in ops.items() if versions <= s.versions and s.excluded is None)


def _walk(graph: onnx.GraphProto, where: str) -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node of ``graph`` and, recursively, of the subgraphs in its attributes."""
    for node in graph.node:
        yield node, where
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _walk(sub, f"{where}/{node.name or node.op_type}.{attr.name}")


def unsupported_nodes(model: onnx.ModelProto, versions: frozenset[str] | None = None) -> list[str]:
    """Nodes that TensorRT (every listed version, or ``versions``) would not parse.

    Walks the main graph and every subgraph (Loop/Scan bodies, If branches, recursively) and
    returns ``"op_type (node name, in graph X)"`` for each node whose operator is outside the
    list, excluded by the project, or from a non-default domain (custom operators).
    """
    ok = supported_ops(versions)
    bad = []
    for node, where in _walk(model.graph, model.graph.name or "main"):
        if node.domain in ("", "ai.onnx") and node.op_type in ok:
            continue
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        bad.append(f"{op} ({node.name or '<unnamed>'}, in graph {where})")
    return bad
