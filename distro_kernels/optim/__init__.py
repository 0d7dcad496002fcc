"""Optimizers built on ``distro_kernels``' kernels."""

from .demo import DeMo, NonFiniteGradientError, StepReport
from .transports import LoopbackTransport, Transport, default_transport

__all__ = ["DeMo", "NonFiniteGradientError", "LoopbackTransport", "StepReport", "Transport", "default_transport"]
