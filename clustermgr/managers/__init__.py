"""Cluster managers: the abstract contract and the back ends.

Each back end is a module of its own, imported when used (some need an extra):
``ssh.SSHManager`` (``[ssh]``), ``slurm.SlurmManager``, ``pbs.PBSManager``,
``sge.SGEManager`` / ``sge.QRSHManager``, ``htcondor.HTCManager``, ``lsf.LSFManager``,
``drmaa.DRMAAManager`` (``[drmaa]``), ``docker.DockerManager`` (``[docker]``),
``scyld.ScyldManager``, ``kubernetes.KubernetesManager``; each has an ``addprocs_<name>``
function form.
"""

from .affinity import AffinityMode, LocalAffinityManager
from .base import ClusterManager, LaunchSpec, ManageOp, WorkerHandle
from .elastic import ElasticManager
from .local import LocalManager

__all__ = ["AffinityMode", "ClusterManager", "ElasticManager", "LaunchSpec", "LocalAffinityManager",
           "LocalManager", "ManageOp", "WorkerHandle"]
