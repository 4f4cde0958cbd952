"""The zoo's nets and the input shape each runs at (why each size: fixtures/zoo/README.md)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "fixtures" / "zoo"
#: The modules of the zoo's Python layers (faster_rcnn's proposal and ROI pooling layers).
PYLAYERS = ZOO / "pylayers"


@dataclass(frozen=True)
class ZooNet:
    name: str
    file: str
    input_shape: tuple[int, int, int, int]  # Caffe NCHW, batch 1
    what: str
    seed: int = 0
    #: folders of the net's Python layer modules: the Caffe worker gets them as ``pythonpath=``
    pythonpath: tuple[Path, ...] = ()


#: The nets and the input each runs at (see fixtures/zoo/README.md for why each size).
NETS: dict[str, ZooNet] = {
    n.name: n
    for n in [
        ZooNet("lenet", "lenet.prototxt", (1, 1, 28, 28), "LeNet (BVLC examples/mnist)"),
        ZooNet("caffenet", "caffenet.prototxt", (1, 3, 103, 103), "CaffeNet (BVLC reference, shipped deploy)"),
        ZooNet("alexnet", "alexnet.prototxt", (1, 3, 103, 103), "AlexNet (BVLC, shipped deploy)"),
        ZooNet("googlenet", "googlenet.prototxt", (1, 3, 224, 224), "GoogLeNet (BVLC, shipped deploy)"),
        ZooNet("vgg16", "vgg16.prototxt", (1, 3, 64, 64), "VGG-16"),
        ZooNet("resnet50", "resnet50.prototxt", (1, 3, 224, 224), "ResNet-50 (KaimingHe deploy)"),
        ZooNet("mobilenet_v1", "mobilenet_v1.prototxt", (1, 3, 128, 128), "MobileNet v1 (shicai/MobileNet-Caffe)"),
        ZooNet("fcn_head", "fcn_head.prototxt", (1, 3, 64, 64), "FCN-32s-style head (Deconvolution + Crop)"),
        ZooNet("fcn8s", "fcn8s.prototxt", (1, 3, 64, 64), "FCN-8s-style net (three Deconvolutions, Crop + Eltwise skips)"),
        ZooNet("ssd_head", "ssd_head.prototxt", (1, 3, 64, 64), "SSD-style head (Normalize, Permute, Flatten, Concat)"),
        ZooNet("ssd_full", "ssd_full.prototxt", (1, 3, 64, 64), "SSD-style head up to PriorBox + DetectionOutput"),
        ZooNet("mtcnn_onet", "mtcnn_onet.prototxt", (1, 3, 48, 48), "MTCNN O-Net (PReLU)"),
        ZooNet("crnn", "crnn.prototxt", (1, 1, 32, 100), "CRNN-style OCR net (conv stack, Permute/Reshape, bidirectional LSTM with cont, FC)"),
        ZooNet("faster_rcnn", "faster_rcnn.prototxt", (1, 3, 64, 64),
               "Faster R-CNN-style net (ZF-style backbone, RPN, Python proposal + ROI pooling layers)",
               seed=4, pythonpath=(PYLAYERS,)),
        ZooNet("ops_tour", "ops_tour.prototxt", (1, 3, 24, 24), "synthetic: the layers the real nets lack"),
    ]
}


def use_pythonpath() -> None:
    """Put every zoo net's Python-layer folders on this process's ``sys.path``: the port builder
    runs pycaffe in this process (``net_info``, ``make_caffemodel``), where Caffe imports a Python
    layer's module when it builds the net. layerparity's Caffe worker gets them as ``pythonpath=``."""
    for net in NETS.values():
        for d in net.pythonpath:
            if os.fspath(d) not in sys.path:
                sys.path.insert(0, os.fspath(d))
