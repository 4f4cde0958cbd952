"""Every exception class of layerparity. Three families, never mixed up:

- :class:`InputError` (a ``ValueError``): the user gave something we cannot use
  (a malformed prototxt, a caffemodel that does not fit the net, a corrupt archive,
  an input of the wrong shape, a bad tolerance, bad command-line usage). The
  message names the file, the layer and what is wrong. The CLI exits 2.
  :class:`FrameworkMissingError` (an ``ImportError``) is the user's to fix too
  (install Caffe or TensorFlow): also exit 2.
- ``AssertionError`` (raised only by :mod:`layerparity.testing`): the models differ.
- :class:`InternalError` (a ``RuntimeError``): a bug in layerparity itself. The CLI
  exits 3 ("layerparity bug: ...").

The tree::

    LayerParityError
    +-- InputError (ValueError)                     exit 2
    |   +-- ModelLoadError
    |   |   +-- CaffeError
    |   +-- ArchiveError
    |   +-- MappingError
    |   +-- InputDataError
    |   |   +-- LayoutMismatch
    |   +-- WeightParityError
    |   +-- ReportFormatError
    |   +-- UsageError
    |   +-- DiagnosisInputError
    +-- FrameworkMissingError (ImportError)         exit 2
    +-- InternalError (RuntimeError)                exit 3

The Caffe worker process (``backends/_caffe_worker.py``) runs without this
package and keeps its own small classes (``_caffe_net.UserError``,
``_caffe_protocol.ProtocolError``, ``PeerClosed``, ``PeerTimeout``);
:class:`~layerparity.backends.caffe.CaffeBackend` maps them to these (see
docs/architecture.md, "Errors").
"""

from __future__ import annotations


class LayerParityError(Exception):
    """Base of every exception layerparity raises on purpose."""


class InputError(LayerParityError, ValueError):
    """Bad user input: the message names the file, the layer and what is wrong."""


class ModelLoadError(InputError):
    """A model file or directory could not be loaded."""


class CaffeError(ModelLoadError):
    """Caffe refused a prototxt or caffemodel (including what glog said before aborting)."""


class ArchiveError(InputError):
    """A trace archive is unreadable, tampered with, or of an unsupported version."""


class MappingError(InputError):
    """A layer mapping names layers that do not exist, or maps one twice."""


class InputDataError(InputError):
    """An input array or image has the wrong shape, rank, dtype or values."""


class LayoutMismatch(InputDataError):
    """Two declared layouts/shapes cannot be reconciled without guessing."""


class WeightParityError(InputError):
    """Weights handed to the weight-parity check are not what it needs (not arrays, a BatchNorm without its blobs)."""


class ReportFormatError(InputError):
    """A JSON report file does not follow docs/report-format.md (the message names the first bad key)."""


class UsageError(InputError):
    """Bad command-line usage found after parsing (e.g. --rtol without --atol)."""


class DiagnosisInputError(InputError):
    """diagnose() was given something it cannot use (wrong types, unusable arrays)."""


class FrameworkMissingError(LayerParityError, ImportError):
    """Caffe or TensorFlow is needed for this call and is not importable."""


class InternalError(LayerParityError, RuntimeError):
    """A bug in layerparity: please report it with the traceback."""
