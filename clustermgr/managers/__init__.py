"""Cluster managers: the abstract contract and the back ends."""

from .base import ClusterManager, LaunchSpec, ManageOp, WorkerHandle
from .local import LocalManager

__all__ = ["ClusterManager", "LaunchSpec", "LocalManager", "ManageOp", "WorkerHandle"]
