"""Say why a layer diverged: ranked diagnoses of the classic Caffe -> TF porting bugs.

The rules live in :mod:`layerparity.diagnosis` (one module per family); this
module is the stable import path the engine and users call::

    from layerparity.diagnose import diagnose, diagnose_report, DiagnosisContext

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
