"""Optimizers built on ``distro_kernels``' kernels."""

from .demo import DeMo, StepReport
from .transports import LoopbackTransport, Transport, default_transport

__all__ = ["DeMo", "LoopbackTransport", "StepReport", "Transport", "default_transport"]
