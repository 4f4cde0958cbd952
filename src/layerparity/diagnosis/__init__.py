"""Diagnosis of the classic Caffe -> TensorFlow porting bugs, one module per family of rules.

This package is the import path: ``from layerparity.diagnosis import diagnose``.

- :mod:`._core`: the case under study (:class:`Case`, with the helpers every rule uses),
  confidence levels, :data:`DIAGNOSIS_KINDS`, strict mode
- :mod:`.reference`: Caffe's forward formulas in NumPy, with the switches a port gets wrong
- :mod:`.shapes`: output shapes differ (ceil pooling, 'SAME' deconv, Interp zoom, padding)
- :mod:`.generic`: value-only relations (reshape, channel order, constant scale/offset, shift)
- :mod:`.conv`: Convolution / Deconvolution / InnerProduct (padding, weight transforms, flatten order)
- :mod:`.pooling`: rounding, AVE divisor, 'SAME' pooling, SPP's pyramid bins
- :mod:`.norm`: LRN, BatchNorm + Scale, MVN
- :mod:`.elementwise`: ReLU/LeakyReLU, PReLU, Softmax, Concat, Eltwise, Crop, Interp, PixelShuffle
- :mod:`.detection`: PriorBox (clip, offset, variance)
- :mod:`.recurrent`: LSTM (the sequence starts of ``cont`` ignored)
- :mod:`.drift`: precision drift over a whole report
- :mod:`.decide`: :func:`diagnose`, the decision list over one divergent layer
- :mod:`.conventions`: :func:`conventions`, port-wide conventions over the finished rows
- :mod:`.weight_check`: :func:`attach_weight_check`, a diverged row's weight check made part of its diagnosis
"""

from ..errors import DiagnosisInputError
from ._core import DIAGNOSIS_KINDS, STRICT_ENV, DiagnosisContext, strict_mode
from .conventions import conventions
from .decide import diagnose
from .drift import diagnose_report, precision_drift
from .weight_check import attach_weight_check

__all__ = [
    "diagnose", "diagnose_report", "precision_drift", "conventions", "DiagnosisContext", "DiagnosisInputError",
    "DIAGNOSIS_KINDS", "STRICT_ENV", "strict_mode", "attach_weight_check",
]
