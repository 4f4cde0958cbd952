"""Diagnosis of the classic Caffe -> TensorFlow porting bugs, one module per family of rules.

- :mod:`._core`: the case under study, confidence levels, helpers
- :mod:`.reference`: Caffe's forward formulas in NumPy, with the switches a port gets wrong
- :mod:`.shapes`: output shapes differ (ceil pooling, 'SAME' deconv, Interp zoom, padding)
- :mod:`.generic`: value-only relations (reshape, channel order, constant scale/offset, shift)
- :mod:`.conv`: Convolution / Deconvolution / InnerProduct (padding, weight transforms, flatten order)
- :mod:`.pooling`: rounding, AVE divisor, 'SAME' pooling
- :mod:`.norm`: LRN, BatchNorm + Scale
- :mod:`.elementwise`: ReLU/LeakyReLU, PReLU, Softmax, Concat, Eltwise, Crop, Interp
- :mod:`.drift`: precision drift over a whole report
- :mod:`.engine`: :func:`diagnose`

Public names are re-exported by :mod:`layerparity.diagnose`.
"""

from ._core import DiagnosisContext, DiagnosisInputError
from .drift import diagnose_report, precision_drift
from .engine import diagnose

#: Every stable ``Diagnosis.kind`` this package can return (see docs/diagnosis.md).
KINDS = (
    "padding_asymmetry", "padding_mismatch", "pool_rounding", "avg_pool_padding_divisor",
    "reshape_not_transpose", "wrong_transpose", "flatten_order", "channel_order", "kernel_flipped",
    "kernel_hw_swapped", "deconv_in_out_swapped", "deconv_same_padding", "lrn_alpha_scaling",
    "lrn_depth_radius", "lrn_parameters", "batchnorm_epsilon", "batchnorm_scale_factor", "missing_scale",
    "softmax_axis", "concat_axis", "eltwise_coeff", "eltwise_operation", "leaky_slope", "prelu_shared_axes",
    "constant_scale", "constant_offset", "spatial_shift", "interp_align_corners", "layout_declaration", "shape_mismatch",
    "precision_drift", "unknown",
)

__all__ = ["diagnose", "diagnose_report", "precision_drift", "DiagnosisContext", "DiagnosisInputError", "KINDS"]
