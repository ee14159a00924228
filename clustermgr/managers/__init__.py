"""Cluster managers: the abstract contract and the back ends."""

from .affinity import AffinityMode, LocalAffinityManager
from .base import ClusterManager, LaunchSpec, ManageOp, WorkerHandle
from .local import LocalManager

__all__ = ["AffinityMode", "ClusterManager", "LaunchSpec", "LocalAffinityManager",
           "LocalManager", "ManageOp", "WorkerHandle"]
