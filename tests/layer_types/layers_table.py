"""docs/layers.md, generated: every layer type this Caffe build registers, and what layerparity
does with it.

    .venv/bin/python tests/layer_types/layers_table.py            # print the page
    .venv/bin/python tests/layer_types/layers_table.py --write    # rewrite docs/layers.md

Where each column comes from:

- the types: ``caffe.layer_type_list()`` of the Caffe the suite runs (its build);
- "captured and aligned": the ``COVERED`` dict of a module ``tests/layer_types/test_*.py``
  (read from the source, not imported), whose tests, parametrized over those keys, run a
  correct TF port of a tiny real Caffe net holding the layer (it must pass with the layer in
  a compared row) and a port with a classic bug of that layer (it must fail there);
  ``NOT_YET`` there says what is not covered and why; a type in neither is "not checked";
- the diagnosis kinds: :data:`LAYER_DIAGNOSES` below, held against the diagnosis package's
  rules by tests/layer_types/test_layers_table.py;
- the zoo nets: the ``type:`` lines of fixtures/zoo/*.prototxt.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "layers.md"
HERE = Path(__file__).resolve().parent

#: Types that never run in a deploy net: training data sources, losses and evaluation.
NOT_DEPLOY = {
    "Accuracy": "evaluation (TRAIN/TEST only)", "AnnotatedData": "data source (SSD training)",
    "ContrastiveLoss": "loss", "Data": "data source (LMDB/LevelDB)",
    "DetectionEvaluate": "evaluation (SSD)", "DummyData": "data source (constant fill)",
    "EuclideanLoss": "loss", "HDF5Data": "data source (HDF5)", "HDF5Output": "writes blobs to a file",
    "HingeLoss": "loss", "ImageData": "data source (image list)", "InfogainLoss": "loss",
    "MemoryData": "data source (arrays)", "MultiBoxLoss": "loss (SSD)",
    "MultinomialLogisticLoss": "loss", "SigmoidCrossEntropyLoss": "loss", "SmoothL1Loss": "loss",
    "SoftmaxWithLoss": "loss", "WindowData": "data source (R-CNN windows)",
}

#: The net's input: compared as the first row of every check (the input the user gives).
INPUT_TYPES = {"Input": "the net's input: the first row of every check (tests/test_compare.py)"}

#: Diagnosis kinds specific to a layer type (docs/diagnosis.md). Every layer also gets the
#: generic relations of GENERIC_DIAGNOSES.
LAYER_DIAGNOSES = {
    "Convolution": ["padding_asymmetry", "padding_mismatch", "kernel_flipped", "kernel_hw_swapped",
                    "reshape_not_transpose", "channel_order"],
    "Deconvolution": ["deconv_in_out_swapped", "deconv_same_padding", "kernel_flipped"],
    "InnerProduct": ["flatten_order", "reshape_not_transpose"],
    "Pooling": ["pool_rounding", "avg_pool_padding_divisor", "padding_asymmetry"],
    "LRN": ["lrn_alpha_scaling", "lrn_depth_radius", "lrn_parameters"],
    "BatchNorm": ["batchnorm_epsilon", "batchnorm_scale_factor"],
    "Scale": ["missing_scale"],
    "ReLU": ["leaky_slope", "relu_capped"],
    "PReLU": ["prelu_shared_axes"],
    "Softmax": ["softmax_axis"],
    "Concat": ["concat_axis"],
    "Eltwise": ["eltwise_coeff", "eltwise_operation"],
    "Crop": ["spatial_shift"],
    "BilinearInterpolate": ["interp_align_corners"],
    "Resize": ["interp_align_corners"],
    "Upsample": ["interp_align_corners"],
    "LSTM": ["lstm_gate_order", "lstm_sequence_start"],  # gate order: from the weight check of the diverged row (diagnosis/weight_check.py)
    "PixelShuffle": ["pixel_shuffle_order"],
    "MVN": ["mvn_parameters"],
    "SPP": ["spp_pyramid"],
    "PriorBox": ["priorbox_parameters"],
    "DetectionOutput": ["detection_output_parameters"],
}

#: Value relations tried on any divergent layer, whatever its type.
GENERIC_DIAGNOSES = ["channel_order", "constant_scale", "constant_offset", "spatial_shift",
                     "wrong_transpose", "reshape_not_transpose", "shape_mismatch", "precision_drift"]


def registered_types() -> list[str]:
    import caffe

    return sorted(caffe.layer_type_list())


def _dict_literal(tree: ast.Module, name: str, path: Path) -> dict[str, str]:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = ast.literal_eval(node.value)
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ValueError(f"{path}: {name} must be a dict literal of str -> str")
            return value
    return {}


def family_modules() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """``{test module path: (COVERED, NOT_YET)}`` of every tests/layer_types/test_*.py that has them."""
    out = {}
    for path in sorted(HERE.glob("test_*.py")):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        covered, not_yet = _dict_literal(tree, "COVERED", path), _dict_literal(tree, "NOT_YET", path)
        if covered or not_yet:
            out[str(path.relative_to(ROOT))] = (covered, not_yet)
    return out


def zoo_usage() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for path in sorted((ROOT / "fixtures" / "zoo").glob("*.prototxt")):
        for t in sorted(set(re.findall(r'\btype:\s*"(\w+)"', path.read_text("utf-8")))):
            used.setdefault(t, []).append(path.stem)
    return used


def rows(types: list[str]) -> list[dict[str, str]]:
    fams = family_modules()
    zoo = zoo_usage()
    out = []
    for t in types:
        row = {"type": t, "status": "not checked", "counterpart": "", "test": "",
               "diagnoses": ", ".join(f"`{k}`" for k in LAYER_DIAGNOSES.get(t, [])),
               "zoo": ", ".join(zoo.get(t, []))}
        if t in NOT_DEPLOY:
            row["status"] = f"not a deploy layer: {NOT_DEPLOY[t]}"
        elif t in INPUT_TYPES:
            row["status"] = "captured and aligned"
            row["counterpart"] = INPUT_TYPES[t]
        for module, (covered, not_yet) in fams.items():
            if t in covered:
                row.update(status="captured and aligned", counterpart=covered[t], test=f"`{Path(module).name}`")
            elif t in not_yet:
                row.update(status=f"not yet: {not_yet[t]}", test=f"`{Path(module).name}`")
        out.append(row)
    return out


def render(types: list[str]) -> str:
    rs = rows(types)
    n_deploy = sum(1 for r in rs if not r["status"].startswith("not a deploy layer"))
    n_ok = sum(1 for r in rs if r["status"] == "captured and aligned")
    lines = [
        "# Layers: every Caffe layer type this build registers",
        "",
        "<!-- generated by tests/layer_types/layers_table.py --write; "
        "tests/layer_types/test_layers_table.py fails when this page is stale -->",
        "",
        "layerparity captures every layer's top blobs, whatever its type: the Caffe worker records",
        "each blob after the layer that writes it. What differs from type to type is whether the",
        "layer is *aligned* (paired with the TF layer or ops of a correct port, so its row is",
        "compared and passes) and which porting bugs are *diagnosed* at it with a named fix.",
        "",
        "| column | meaning |",
        "| --- | --- |",
        "| status | `captured and aligned`: a test against real Caffe and real TF runs a correct port "
        "of a tiny net holding the layer (the check passes, the layer is in a compared row) and a "
        "port with a classic bug of that layer (the check fails there); `not yet`: what is "
        "missing; `not a deploy layer`: training data, losses, evaluation |",
        "| TF counterpart | what the tested correct port uses for the layer |",
        "| diagnosis kinds | the kinds specific to the layer ([diagnosis.md](diagnosis.md)); any layer "
        "also gets the generic relations: " + ", ".join(f"`{k}`" for k in GENERIC_DIAGNOSES) + " |",
        "| zoo nets | the nets of fixtures/zoo that use it ([validation.md](validation.md)) |",
        "| test | the module in tests/layer_types/ that holds the claim |",
        "",
        f"This build registers {len(rs)} types: {n_deploy} can run in a deploy net, and {n_ok} of "
        "them are captured and aligned.",
        "",
        "How a type is named inside layerparity (the kind that pairs it with TF layers, ops and "
        "TFLite builtins):",
        "",
        "```python",
        "from layerparity.kinds import canonical_kind, compatible",
        "",
        'print(canonical_kind("BNLL"), canonical_kind("Deconvolution"), canonical_kind("Conv2DTranspose"))',
        "# softplus deconv deconv",
        'print(compatible("deconv", canonical_kind("CONV_2D")))',
        "# False",
        "```",
        "",
        "| Caffe type | status | TF counterpart | diagnosis kinds | zoo nets | test |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rs:
        cells = [f"`{r['type']}`", r["status"], r["counterpart"], r["diagnoses"], r["zoo"], r["test"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render(registered_types())
    if "--write" in argv:
        PAGE.write_text(text, "utf-8")
        print(f"wrote {PAGE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
