"""Cluster managers: the abstract contract and the back ends.

``SSHManager`` lives in ``clustermgr.managers.ssh`` (it needs the ``ssh`` extra).
"""

from .affinity import AffinityMode, LocalAffinityManager
from .base import ClusterManager, LaunchSpec, ManageOp, WorkerHandle
from .elastic import ElasticManager
from .local import LocalManager

__all__ = ["AffinityMode", "ClusterManager", "ElasticManager", "LaunchSpec", "LocalAffinityManager",
           "LocalManager", "ManageOp", "WorkerHandle"]
