"""Precision variants: FP16 and INT8 (explicit Q/DQ) graphs, their form, meta.json, the ladder,
the CLI options of export and label."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from cli import main
from export.bundle import export_bundle
from export.precision import (
    Int8Recipe,
    PrecisionError,
    equalize_depthwise,
    int8_form_problems,
    keep_float_nodes,
    parse_precisions,
    to_int8,
)
from export.trt_ops import unsupported_nodes
from export.verify import check_report, format_report, verify_bundle, verify_images
from psa_infer.bundle import BundleError, engine_path, load_meta, open_bundle

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

VARIANTS = [(p, m) for p in ("fp16", "int8") for m in ("cam", "aff")]


@pytest.fixture(scope="module")
def variants(tiny_bundle, tmp_path_factory):
    """The tiny bundle re-exported with fp16 and int8 graphs, INT8 calibrated on the train
    split (the ladder runs on val)."""
    t = tiny_bundle
    out = tmp_path_factory.mktemp("precision") / "bundle"
    calib = verify_images(t.data, t.classes, "train")
    path = export_bundle(
        t.cam, t.aff, out, t.label_cfg, t.cam_cfg, precisions=("fp32", "fp16", "int8"),
        calib_images=calib,
    )  # fmt: skip
    return SimpleNamespace(**{**vars(t), "bundle": path, "calib": calib})


@pytest.mark.parametrize("precision,name", VARIANTS)
def test_every_variant_is_opset_17_and_tensorrt_parseable(variants, precision, name):
    model = onnx.load(variants.bundle / f"{name}.{precision}.onnx")
    fp32 = onnx.load(variants.bundle / f"{name}.onnx")
    assert {o.domain: o.version for o in model.opset_import} == {"": 17}
    assert model.ir_version == fp32.ir_version
    assert unsupported_nodes(model) == []
    assert {p.key: p.value for p in model.metadata_props}["precision"] == precision
    # The runtime feeds and reads float32 whatever the precision.
    io = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    assert set(io) == {onnx.TensorProto.FLOAT}


def test_fp16_graphs_compute_in_half(variants):
    model = onnx.load(variants.bundle / "cam.fp16.onnx")
    weights = {i.name: i.data_type for i in model.graph.initializer}
    conv_weights = [weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]
    assert conv_weights and set(conv_weights) == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("name", ["cam", "aff"])
def test_int8_graphs_have_tensorrts_explicit_quantization_form(variants, name):
    model = onnx.load(variants.bundle / f"{name}.int8.onnx")
    assert int8_form_problems(model) == []
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    # The first conv and the output convs stay float: no DequantizeLinear feeds their weights.
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    fp32 = onnx.load(variants.bundle / f"{name}.onnx")
    kept = set(keep_float_nodes(fp32, Int8Recipe()))
    assert len(kept) >= 2
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert all(convs[k].input[1] not in dq_out for k in kept)
    assert sum(c.input[1] in dq_out for c in convs.values()) == len(convs) - len(kept)


def _q_model(zero_point, zp_type, axis=None, bias_int32=False) -> onnx.ModelProto:
    """A tiny graph with one weight DequantizeLinear (and an int32 bias one if asked)."""
    h = onnx.helper
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.int8), "w")
    s = numpy_helper.from_array(np.ones(2 if axis is not None else (), np.float32), "s")
    z = numpy_helper.from_array(np.full(s.dims or (), zero_point, zp_type), "z")
    kw = {"axis": axis} if axis is not None else {}
    nodes = [h.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], **kw)]
    inits = [w, s, z]
    if bias_int32:
        inits.append(numpy_helper.from_array(np.ones(2, np.int32), "b"))
        nodes.append(h.make_node("DequantizeLinear", ["b", "s"], ["bf"], axis=0))
    nodes.append(h.make_node("Conv", ["x", "wf", "bf"] if bias_int32 else ["x", "wf"], ["y"]))
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    return h.make_model(h.make_graph(nodes, "g", [x], [y], inits))


def test_int8_form_check_names_what_tensorrt_would_not_read():
    assert int8_form_problems(_q_model(0, np.int8, axis=0)) == []
    assert "zero point" in int8_form_problems(_q_model(3, np.int8, axis=0))[0]
    assert "uint8" in int8_form_problems(_q_model(0, np.uint8, axis=0))[0]
    assert "per-tensor weight" in int8_form_problems(_q_model(0, np.int8))[0]
    assert any("int32" in p for p in int8_form_problems(_q_model(0, np.int8, 0, True)))


def _mobile_block(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2's pattern at toy size: 1×1 conv → ReLU6 → 3×3 depthwise conv → ReLU6 → 1×1
    conv, with one depthwise channel ~100× smaller than the others."""
    h = onnx.helper
    rng = np.random.default_rng(seed)
    dw = rng.normal(size=(6, 1, 3, 3)).astype(np.float32)
    dw[2] *= 0.01
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 4, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(dw, "w2"),
        numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(size=(3, 6, 1, 1)).astype(np.float32), "w3"),
    ]
    six = [h.make_node("Constant", [], [f"c{i}"], value=h.make_tensor(f"t{i}", 1, [], [v]))
           for i, v in enumerate((0.0, 6.0, 0.0, 6.0))]  # fmt: skip
    nodes = [
        *six,
        h.make_node("Conv", ["x", "w1"], ["a"], name="expand"),
        h.make_node("Clip", ["a", "c0", "c1"], ["a6"], name="relu6_a"),
        h.make_node("Conv", ["a6", "w2", "b2"], ["d"], name="dw", group=6, pads=[1] * 4),
        h.make_node("Clip", ["d", "c2", "c3"], ["d6"], name="relu6_d"),
        h.make_node("Conv", ["d6", "w3"], ["y"], name="project"),
    ]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    model = h.make_model(h.make_graph(nodes, "block", [x], [y], inits),
                         opset_imports=[h.make_opsetid("", 17)])  # fmt: skip
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, outputs=("y",)) -> list[np.ndarray]:
    import onnxruntime as ort

    if set(outputs) - {o.name for o in model.graph.output}:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), {"x": x})


def test_recipe_options_are_range_checked():
    for bad, match in [
        ({"method": "mse"}, "calibration method"),
        ({"percentile": 0}, r"percentile: expected a number in \(0, 100\]"),
        ({"percentile": 100.5}, "percentile"),
        ({"placement": "outputs"}, "placement: expected one of inputs, all"),
        ({"equalize": 0.5}, r"equalization: expected a factor in \[1, 64\]"),
        ({"equalize": 65}, "equalization"),
        ({"equalize": True}, "equalization"),
    ]:
        with pytest.raises(PrecisionError, match=match):
            Int8Recipe(**bad)
    assert Int8Recipe(equalize=1).record()["equalize"] == 1
    assert "percentile" not in Int8Recipe(method="entropy").record()


def test_equalization_keeps_the_function_and_evens_the_channels():
    model = _mobile_block()
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1, 4, 8, 8)).astype(np.float32) for _ in range(4)]
    batches = {xs[0].shape: xs}
    eq, count = equalize_depthwise(model, batches, 16.0)
    assert count == 1
    onnx.checker.check_model(eq, full_check=True)
    assert unsupported_nodes(eq) == []
    ops = [n.op_type for n in eq.graph.node]
    assert ops.count("Clip") == 1 and "Relu" in ops and "Min" in ops  # the second ReLU6 only
    assert ops.count("Constant") == 2  # the replaced Clip's bounds are gone with it
    for x in xs:
        np.testing.assert_allclose(_run(eq, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)
    # The small channel is scaled up (by at most 16), the others are not.
    before = np.max([np.abs(_run(model, x, ["d6"])[0]).max(axis=(0, 2, 3)) for x in xs], 0)
    after = np.max([np.abs(_run(eq, x, ["d6"])[0]).max(axis=(0, 2, 3)) for x in xs], 0)
    k = after / before
    assert 1.0 <= k.min() and k.max() <= 16.0 + 1e-3 and np.argmax(k) == 2
    assert after.min() / after.max() > before.min() / before.max()
    unchanged, none = equalize_depthwise(model, batches, 1.0)
    assert none == 0 and unchanged is model


def test_calibration_prints_nothing_on_stdout(tmp_path, capfd):
    """ONNX Runtime's histogram calibrators print a line per batch; stdout is the command's."""
    path = tmp_path / "block.onnx"
    onnx.save_model(_mobile_block(), path)
    rng = np.random.default_rng(3)
    batches = {(1, 4, 8, 8): [rng.normal(size=(1, 4, 8, 8)).astype(np.float32) for _ in range(3)]}
    to_int8(path, batches, Int8Recipe(method="percentile"))
    assert capfd.readouterr().out == ""


def test_placement_and_depthwise_float_decide_where_qdq_goes(tmp_path):
    path = tmp_path / "block.onnx"
    onnx.save_model(_mobile_block(), path)
    rng = np.random.default_rng(2)
    batches = {(1, 4, 8, 8): [rng.normal(size=(1, 4, 8, 8)).astype(np.float32) for _ in range(4)]}
    plain = {"float_first": False, "float_last": False, "equalize": 1.0}

    def conv_outputs_quantized(model):
        conv_out = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
        return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"} & conv_out

    def int8_weights(model):
        dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dq}

    every = to_int8(path, batches, Int8Recipe(placement="all", float_depthwise=False, **plain))
    assert conv_outputs_quantized(every) and int8_weights(every) == {"expand", "dw", "project"}
    inputs = to_int8(path, batches, Int8Recipe(placement="inputs", **plain))
    assert not conv_outputs_quantized(inputs) and int8_weights(inputs) == {"expand", "project"}
    equalized = to_int8(path, batches, Int8Recipe(**{**plain, "equalize": 4.0}))
    for model in (every, inputs, equalized):
        assert int8_form_problems(model) == [] and unsupported_nodes(model) == []
    assert "Min" in {n.op_type for n in equalized.graph.node}


def test_meta_lists_the_variants_and_checks_their_files(variants, tmp_path):
    meta = load_meta(variants.bundle)
    assert set(meta["precisions"]) == {"fp16", "int8"}
    assert meta["precisions"]["int8"]["cam"]["file"] == "cam.int8.onnx"
    assert meta["precisions"]["int8"]["calibration"]["images"] == len(variants.calib)
    assert meta["precisions"]["int8"]["calibration"]["placement"] == "inputs"
    b = shutil.copytree(variants.bundle, tmp_path / "b")
    (b / "aff.int8.onnx").write_bytes((b / "aff.fp16.onnx").read_bytes())
    with pytest.raises(BundleError, match=r"b/aff.int8.onnx: sha256 differs from meta.json's"):
        load_meta(b)
    meta["precisions"]["fp16"]["cam"]["file"] = "cam.half.onnx"
    (b / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"precisions.fp16.cam: expected \{'file': 'cam.fp16"):
        load_meta(b, check_files=False)


def test_open_bundle_picks_the_variant(variants, tiny_bundle):
    cpu = ["CPUExecutionProvider"]
    with open_bundle(variants.bundle, providers=cpu, precision="int8") as opened:
        assert {b.name for k, b in opened.backends.items() if k != "rw"} == {
            "cam.int8.onnx",
            "aff.int8.onnx",
        }
    with pytest.raises(BundleError, match=r"no fp16 graphs in this bundle \(it has fp32\)"):
        open_bundle(tiny_bundle.bundle, providers=cpu, precision="fp16")
    with pytest.raises(BundleError, match="precision: expected one of fp32, fp16, int8"):
        open_bundle(variants.bundle, providers=cpu, precision="bf16")
    assert engine_path(variants.bundle, "cam", "int8").name == "cam.int8.engine"
    assert engine_path(variants.bundle, "rw", "int8").name == "rw.engine"  # the walk is fp32


def test_ladder_compares_every_variant_with_fp32(variants):
    images = verify_images(variants.data, variants.classes, "val")
    report = verify_bundle(variants.bundle, variants.cam, variants.aff, images)
    assert set(report["precisions"]) == {"fp16", "int8"}
    for r in report["precisions"].values():
        assert set(r["max_abs_diff"]) == {"cams", "logits", "features"}
        # fp16 rounds every tensor (~1e-3 relative): the outputs move, but not by much.
        assert 0 < r["max_abs_diff"]["features"] <= 0.1 * max(1, r["max_abs_fp32"]["features"])
        assert r["miou"]["images"] == len(images)
        assert r["ok"] == (r["label_agreement"] >= r["min_agreement"] and r["miou"]["delta"] >= -1)
    # A random-weight tiny network's float16 graph makes the same decisions.
    assert report["precisions"]["fp16"]["label_agreement"] >= 99.5
    text = format_report(report)
    assert "int8 labels" in text and "delta (int8 - fp32)" in text
    strict = {"int8": {"min_agreement": 100.1, "max_miou_drop": 1.0}}
    report = verify_bundle(variants.bundle, variants.cam, variants.aff, images[:1],
                           variant_targets=strict)  # fmt: skip
    assert not report["ok"] and not report["precisions"]["int8"]["ok"]
    with pytest.raises(Exception, match=r"int8 labels agree with fp32 on [\d.]+% of pixels < 100"):
        check_report(report)


def test_parse_precisions():
    assert parse_precisions("int8") == ("fp32", "int8")
    assert parse_precisions(" FP16 , fp32") == ("fp32", "fp16")
    with pytest.raises(PrecisionError, match=r"--precision: expected .* fp32, fp16, int8, got 'x'"):
        parse_precisions("x")


def test_int8_without_calibration_images_is_an_error(tiny_bundle, tmp_path):
    t = tiny_bundle
    with pytest.raises(PrecisionError, match=r"int8: needs calibration images \(--calib"):
        export_bundle(t.cam, t.aff, tmp_path / "b", t.label_cfg, t.cam_cfg, precisions=["int8"])
    assert not (tmp_path / "b").exists()


def test_cli_export_precision_errors_are_one_line(tiny_bundle, tmp_path):
    t = tiny_bundle
    base = ["export", "--cam", str(t.cam), "--aff", str(t.aff), "-o", str(tmp_path / "b")]
    r = CliRunner().invoke(main, [*base, "--precision", "fp32,fp64"])
    assert r.exit_code == 1 and "--precision: expected a comma-separated list" in r.output
    r = CliRunner().invoke(main, [*base, "--precision", "int8"])
    assert r.exit_code == 2 and "--precision int8 needs --calib IMAGES" in r.output
    r = CliRunner().invoke(main, [*base, "--precision", "int8", "--calib", str(tmp_path / "no")])
    assert r.exit_code == 2 and "'--calib': Path" in r.output and "does not exist" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, [*base, "--precision", "int8", "--calib", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "empty" in r.output, r.output
    assert not (tmp_path / "b").exists()


def test_cli_export_and_label_with_precisions(tiny_bundle, tmp_path):
    t = tiny_bundle
    out = tmp_path / "b"
    r = CliRunner().invoke(
        main,
        ["export", "--cam", str(t.cam), "--aff", str(t.aff), "-o", str(out), "--set",
         "make_cam.scales=[1.0,0.5]", "--precision", "fp32,fp16,int8", "--calib",
         str(t.data), "--calib-limit", "2", "--verify", str(t.data), "--verify-limit", "2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "fp16 labels" in r.output and "int8 mIoU" in r.output
    assert "precisions fp32, fp16, int8" in r.output
    report = json.loads((out / "verify.json").read_text())
    assert set(report["precisions"]) == {"fp16", "int8"}
    assert load_meta(out)["precisions"]["int8"]["calibration"]["images"] == 2
    args = ["label", str(t.data), "--model", str(out), "--backend", "onnxruntime", "--device",
            "cpu", "--precision", "int8", "-o", str(tmp_path / "labels")]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "int8" in r.output
    assert len(list((tmp_path / "labels").glob("*.png"))) >= 1
    torch_args = ["label", str(t.data), "--cam", str(t.cam), "--aff", str(t.aff),
                  "--precision", "fp16", "-o", str(tmp_path / "l2")]  # fmt: skip
    r = CliRunner().invoke(main, torch_args)
    assert r.exit_code == 2 and "the torch backend runs the checkpoints in float32" in r.output
