"""Framework runners: capture only. Each imports its framework lazily."""

from .base import Backend, InputSpec

__all__ = ["Backend", "InputSpec"]
