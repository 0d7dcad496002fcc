"""``python -m distro_kernels demo``: DeMo vs AdamW + all-reduce on real peer processes."""

from .train import DemoConfig, run

__all__ = ["DemoConfig", "run"]
