"""Say why a layer diverged: ranked diagnoses of the classic Caffe -> TF porting bugs.

The rules live in :mod:`layerparity.diagnosis` (one module per family); this
module is the stable import path the engine and users call. Pure NumPy.

>>> import numpy as np
>>> from layerparity.result import LayerResult
>>> from layerparity.trace import Probe
>>> x = np.random.default_rng(0).random((1, 3, 4, 4)).astype(np.float32)
>>> caffe = Probe("data", "Input", x, layout="NCHW")
>>> tf = Probe("data", "InputLayer", 255 * x.transpose(0, 2, 3, 1), layout="NHWC")
>>> d = diagnose(LayerResult("data", "data", "data"), caffe, tf)
>>> d[0].kind, d[0].evidence["named"]
('constant_scale', '255 (raw_scale)')
>>> diagnose(LayerResult("data", "data", "data"), caffe, Probe("data", "InputLayer", x.transpose(0, 2, 3, 1), layout="NHWC"))
[]

See docs/diagnosis.md for every kind, its symptom, an example and the fix.
"""

from .diagnosis import (
    KINDS,
    DiagnosisContext,
    DiagnosisInputError,
    diagnose,
    diagnose_report,
    precision_drift,
)

__all__ = ["diagnose", "diagnose_report", "precision_drift", "DiagnosisContext", "DiagnosisInputError", "KINDS"]
