"""Exceptions. Three families, never mixed up:

- :class:`InputError` (a ``ValueError``): the user gave something we cannot use
  (a malformed prototxt, a caffemodel that does not fit the net, a corrupt archive,
  an input of the wrong shape). The message names the file, the layer and what is
  wrong.
- ``AssertionError`` (raised only by :mod:`layerparity.testing`): the models differ.
- :class:`InternalError` (a ``RuntimeError``): a bug in layerparity itself.
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


class DiagnosisInputError(InputError):
    """diagnose() was given something it cannot use (wrong types, unusable arrays)."""


class FrameworkMissingError(LayerParityError, ImportError):
    """Caffe or TensorFlow is needed for this call and is not importable."""


class InternalError(LayerParityError, RuntimeError):
    """A bug in layerparity: please report it with the traceback."""
