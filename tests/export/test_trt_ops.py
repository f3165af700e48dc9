"""Every exported graph uses only operators that TensorRT's ONNX parser supports (8.5 and 10.x)."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from export.rw_graph import build_rw_model
from export.trt_ops import (
    OPS_FILE,
    all_versions,
    load_ops,
    parse_ops_file,
    supported_ops,
    unsupported_nodes,
)
from psa_infer.pipeline import REFERENCE_WALK


def tiny_model(nodes, inputs, outputs, name="main"):
    graph = helper.make_graph(nodes, name, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def vinfo(name, elem=TensorProto.FLOAT, shape=(4,)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_list_file_parses_and_has_the_basics():
    ops = load_ops()
    assert all_versions() == {"8.5", "10.15"}
    basics = set(
        "Add Sub Mul Div Conv Relu Pad Slice Concat Reshape ReduceSum ReduceMean Loop Exp Pow "
        "Resize MatMul Shape Identity Constant Unsqueeze Squeeze Transpose Where Cast".split()
    )
    assert basics <= supported_ops()
    assert len(supported_ops()) > 120
    # newer than 8.5: listed, but only for 10.15
    assert ops["LayerNormalization"].versions == {"10.15"}
    assert "LayerNormalization" not in supported_ops()
    assert "LayerNormalization" in supported_ops(frozenset({"10.15"}))
    # parsed by TensorRT, refused by the project (DESIGN.md: no scatter, dense shapes only)
    for op in ("ScatterND", "ScatterElements", "NonZero"):
        assert ops[op].versions == {"8.5", "10.15"} and ops[op].excluded
        assert op not in supported_ops()
    # the header cites its sources
    header = OPS_FILE.read_text().split("\n\n")[0]
    assert "onnx/onnx-tensorrt" in header and "docs/operators.md" in header
    assert "6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc" in header


@pytest.mark.parametrize(
    "line",
    ["Add", "Add 8.5 ten", "Add 8.5\nAdd 10.15", "exclude: why"],
)
def test_malformed_list_is_an_error(line):
    with pytest.raises(ValueError, match=r"tensorrt_onnx_ops.txt:\d+: expected '<op_type> <ver"):
        parse_ops_file(line)


@pytest.mark.parametrize("pairs", ["full", "psa"])
def test_rw_graph_is_parseable_by_tensorrt(pairs):
    model = build_rw_model(**{**REFERENCE_WALK.to_meta(), "pairs": pairs})
    assert len(model.graph.node) > 10  # the walk below is really looked at
    assert unsupported_nodes(model) == []


def test_scatter_and_nonzero_are_flagged():
    model = tiny_model(
        [
            helper.make_node("Abs", ["x"], ["a"], name="fine"),
            helper.make_node("ScatterND", ["a", "idx", "upd"], ["y"], name="scatter"),
            helper.make_node("NonZero", ["y"], ["nz"], name="nonzero"),
        ],
        [vinfo("x"), vinfo("idx", TensorProto.INT64, (1, 1)), vinfo("upd", shape=(1,))],
        [vinfo("y"), vinfo("nz", TensorProto.INT64, (1, "n"))],
    )
    assert unsupported_nodes(model) == [
        "ScatterND (scatter, in graph main)",
        "NonZero (nonzero, in graph main)",
    ]


def test_nodes_hidden_in_subgraphs_are_flagged():
    # Loop body holding an If whose else branch holds a NonZero: found two levels down.
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["v"], ["t_out"], name="keep")], "then", [], [vinfo("t_out")]
    )
    else_branch = helper.make_graph(
        [helper.make_node("NonZero", ["v"], ["e_out"], name="hidden_nonzero")],
        "else",
        [],
        [vinfo("e_out", TensorProto.INT64, (1, "n"))],
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="cond"),
            helper.make_node("ScatterElements", ["v", "i", "u"], ["v_out"], name="hidden_scatter"),
            helper.make_node(
                "If",
                ["cond_in"],
                ["branch"],
                name="choose",
                then_branch=then_branch,
                else_branch=else_branch,
            ),  # fmt: skip
        ],
        "body",
        [vinfo("iter", TensorProto.INT64, ()), vinfo("cond_in", TensorProto.BOOL, ()), vinfo("v")],
        [vinfo("cond_out", TensorProto.BOOL, ()), vinfo("v_out")],
    )
    loop = helper.make_node("Loop", ["n", "", "x"], ["y"], name="walk", body=body)
    model = tiny_model(
        [loop],
        [
            vinfo("n", TensorProto.INT64, ()),
            vinfo("x"),
            vinfo("i", TensorProto.INT64, (4,)),
            vinfo("u"),
        ],
        [vinfo("y")],
    )
    assert unsupported_nodes(model) == [
        "ScatterElements (hidden_scatter, in graph main/walk.body)",
        "NonZero (hidden_nonzero, in graph main/walk.body/choose.else_branch)",
    ]


def test_custom_domains_and_newer_ops_are_flagged():
    model = tiny_model(
        [
            helper.make_node("Gelu", ["x"], ["a"], name="ms_gelu", domain="com.microsoft"),
            helper.make_node("LayerNormalization", ["a", "s"], ["y"], name="ln"),
        ],
        [vinfo("x"), vinfo("s")],
        [vinfo("y")],
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert unsupported_nodes(model) == [
        "com.microsoft::Gelu (ms_gelu, in graph main)",
        "LayerNormalization (ln, in graph main)",
    ]
    # TensorRT 10.15 alone parses LayerNormalization; a custom op never
    assert unsupported_nodes(model, frozenset({"10.15"})) == [
        "com.microsoft::Gelu (ms_gelu, in graph main)"
    ]
