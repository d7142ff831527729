"""Moved: the Kubernetes executor is the package services/training/k8s/ (docs/kubernetes-executor.md),
the scheduler wiring is services/training/scheduler.py. Kept only for services/training/service.py's
import until that line says ``from services.training.scheduler import build_scheduler``; then delete.
"""

from services.training.scheduler import build_scheduler

__all__ = ["build_scheduler"]
