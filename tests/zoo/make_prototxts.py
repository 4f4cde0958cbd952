"""Writes the zoo prototxts that are long and regular (VGG-16, ResNet-50, MobileNet v1).

Run ``python tests/zoo/make_prototxts.py`` to regenerate fixtures/zoo/{vgg16,resnet50,
mobilenet_v1}.prototxt; ``tests/zoo/test_fixtures.py`` checks the committed files
equal this output, so the two cannot drift. Layer names, types and parameters
follow the published deploy files:

- VGG-16: the VGG_ILSVRC_16_layers_deploy.prototxt of the Oxford VGG group
  (conv1_1..conv5_3, pool1..pool5, fc6, fc7, fc8, prob).
- ResNet-50: KaimingHe/deep-residual-networks ResNet-50-deploy.prototxt
  (conv1 + bn_conv1 + scale_conv1 + conv1_relu, res2a_branch1 projection
  shortcuts, bnXX_branchYY / scaleXX_branchYY, Eltwise resXX, pool5 AVE 7, fc1000).
- MobileNet v1: shicai/MobileNet-Caffe mobilenet_deploy.prototxt
  (convX/dw = Convolution with group = channels, convX/sep 1x1, /bn, /scale,
  reluX/dw, reluX/sep, pool6 global AVE, fc7 as 1x1 Convolution, prob).

The input shapes written here are the published ones (batch 1); the tests run
smaller inputs where the architecture allows (see fixtures/zoo/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"


def _input(name: str, c: int, h: int, w: int) -> str:
    return (
        f'name: "{name}"\nlayer {{\n  name: "data"\n  type: "Input"\n  top: "data"\n'
        f"  input_param {{ shape: {{ dim: 1 dim: {c} dim: {h} dim: {w} }} }}\n}}\n"
    )


def _layer(name: str, typ: str, bottoms: list[str], tops: list[str], body: str = "") -> str:
    s = f'layer {{\n  name: "{name}"\n  type: "{typ}"\n'
    s += "".join(f'  bottom: "{b}"\n' for b in bottoms)
    s += "".join(f'  top: "{t}"\n' for t in tops)
    if body:
        s += "".join(f"  {line}\n" for line in body.strip().splitlines())
    return s + "}\n"


def _conv(name, bottom, top, n, k, s=1, p=0, bias=True, group=1):
    body = f"convolution_param {{\n  num_output: {n}\n  kernel_size: {k}\n"
    if p:
        body += f"  pad: {p}\n"
    if s != 1:
        body += f"  stride: {s}\n"
    if group != 1:
        body += f"  group: {group}\n"
    if not bias:
        body += "  bias_term: false\n"
    body += "}"
    return _layer(name, "Convolution", [bottom], [top], body)


def _relu(name, blob):
    return _layer(name, "ReLU", [blob], [blob])


def _bn_scale(bn, scale, blob):
    return _layer(bn, "BatchNorm", [blob], [blob], "batch_norm_param {\n  use_global_stats: true\n}") + _layer(
        scale, "Scale", [blob], [blob], "scale_param {\n  bias_term: true\n}"
    )


def _pool(name, bottom, top, pool, k=None, s=None, p=0, global_=False):
    body = f"pooling_param {{\n  pool: {pool}\n"
    if global_:
        body += "  global_pooling: true\n"
    else:
        body += f"  kernel_size: {k}\n  stride: {s}\n"
    if p:
        body += f"  pad: {p}\n"
    return _layer(name, "Pooling", [bottom], [top], body + "}")


def _ip(name, bottom, top, n):
    return _layer(name, "InnerProduct", [bottom], [top], f"inner_product_param {{\n  num_output: {n}\n}}")


def vgg16() -> str:
    out = _input("VGG_ILSVRC_16_layers", 3, 224, 224)
    blob = "data"
    for stage, (n, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for r in range(1, reps + 1):
            name = f"conv{stage}_{r}"
            out += _conv(name, blob, name, n, 3, p=1) + _relu(f"relu{stage}_{r}", name)
            blob = name
        out += _pool(f"pool{stage}", blob, f"pool{stage}", "MAX", 2, 2)
        blob = f"pool{stage}"
    for name, n, drop in (("fc6", 4096, "drop6"), ("fc7", 4096, "drop7")):
        out += _ip(name, blob, name, n) + _relu(f"relu{name[2:]}", name)
        out += _layer(drop, "Dropout", [name], [name], "dropout_param {\n  dropout_ratio: 0.5\n}")
        blob = name
    out += _ip("fc8", blob, "fc8", 1000) + _layer("prob", "Softmax", ["fc8"], ["prob"])
    return out


def resnet50() -> str:
    out = _input("ResNet-50", 3, 224, 224)
    out += _conv("conv1", "data", "conv1", 64, 7, s=2, p=3) + _bn_scale("bn_conv1", "scale_conv1", "conv1")
    out += _relu("conv1_relu", "conv1") + _pool("pool1", "conv1", "pool1", "MAX", 3, 2)
    blob = "pool1"
    for stage, (n, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=2):
        for b in range(blocks):
            x = f"{stage}{chr(ord('a') + b)}"
            stride = 2 if b == 0 and stage > 2 else 1
            if b == 0:
                br1 = f"res{x}_branch1"
                out += _conv(br1, blob, br1, 4 * n, 1, s=stride, bias=False)
                out += _bn_scale(f"bn{x}_branch1", f"scale{x}_branch1", br1)
                shortcut = br1
            else:
                shortcut = blob
            prev = blob
            for part, (k, cout, s, p) in zip("abc", [(1, n, stride, 0), (3, n, 1, 1), (1, 4 * n, 1, 0)], strict=True):
                name = f"res{x}_branch2{part}"
                out += _conv(name, prev, name, cout, k, s=s, p=p, bias=False)
                out += _bn_scale(f"bn{x}_branch2{part}", f"scale{x}_branch2{part}", name)
                if part != "c":
                    out += _relu(f"res{x}_branch2{part}_relu", name)
                prev = name
            out += _layer(f"res{x}", "Eltwise", [shortcut, prev], [f"res{x}"])
            out += _relu(f"res{x}_relu", f"res{x}")
            blob = f"res{x}"
    out += _pool("pool5", blob, "pool5", "AVE", 7, 1)
    out += _ip("fc1000", "pool5", "fc1000", 1000) + _layer("prob", "Softmax", ["fc1000"], ["prob"])
    return out


def mobilenet_v1() -> str:
    out = _input("MOBILENET", 3, 224, 224)
    out += _conv("conv1", "data", "conv1", 32, 3, s=2, p=1, bias=False)
    out += _bn_scale("conv1/bn", "conv1/scale", "conv1") + _relu("relu1", "conv1")
    blob, cin = "conv1", 32
    plan = [("2_1", 64, 1), ("2_2", 128, 2), ("3_1", 128, 1), ("3_2", 256, 2), ("4_1", 256, 1),
            ("4_2", 512, 2), ("5_1", 512, 1), ("5_2", 512, 1), ("5_3", 512, 1), ("5_4", 512, 1),
            ("5_5", 512, 1), ("5_6", 1024, 2), ("6", 1024, 1)]
    for tag, cout, s in plan:
        dw, sep = f"conv{tag}/dw", f"conv{tag}/sep"
        out += _conv(dw, blob, dw, cin, 3, s=s, p=1, bias=False, group=cin)
        out += _bn_scale(f"{dw}/bn", f"{dw}/scale", dw) + _relu(f"relu{tag}/dw", dw)
        out += _conv(sep, dw, sep, cout, 1, bias=False)
        out += _bn_scale(f"{sep}/bn", f"{sep}/scale", sep) + _relu(f"relu{tag}/sep", sep)
        blob, cin = sep, cout
    out += _pool("pool6", blob, "pool6", "AVE", global_=True)
    out += _conv("fc7", "pool6", "fc7", 1000, 1)
    out += _layer("prob", "Softmax", ["fc7"], ["prob"])
    return out


GENERATED = {"vgg16.prototxt": vgg16, "resnet50.prototxt": resnet50, "mobilenet_v1.prototxt": mobilenet_v1}


def main() -> int:
    for fname, fn in GENERATED.items():
        (ZOO / fname).write_text(fn())
        print("wrote", ZOO / fname)
    return 0


if __name__ == "__main__":
    sys.exit(main())
