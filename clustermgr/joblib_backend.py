"""A joblib parallel backend named ``"clustermgr"``.

``import clustermgr.joblib_backend`` registers it (``import clustermgr`` does too when
joblib is already imported); then::

    with joblib.parallel_config(backend="clustermgr"):
        joblib.Parallel()(joblib.delayed(f)(x) for x in xs)   # or scikit-learn's n_jobs

runs on the cluster's workers.  With no workers yet, the first use starts ``n_jobs`` local
workers (one per CPU for ``n_jobs=-1``); they stay until ``clustermgr.shutdown()``.  joblib
calls ``configure`` per ``Parallel`` call, ``submit`` per batch (from its dispatch thread)
and ``terminate`` at the end; each Parallel call gets a ``ClusterExecutor`` over the
workers, which keeps them.
"""

from __future__ import annotations

import os
from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from .executor import ClusterExecutor


class ClusterBackend(AutoBatchingMixin, ParallelBackendBase):
    supports_retrieve_callback = True
    supports_timeout = True
    supports_inner_max_num_threads = False
    default_n_jobs = -1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executor: ClusterExecutor | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        from .cluster import nworkers, workers

        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if workers() != [1]:
            return nworkers()
        cpus = len(os.sched_getaffinity(0))
        if n_jobs is None or n_jobs < 0:
            return max(cpus + 1 + (n_jobs or -1), 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        from .cluster import addprocs, workers

        n = self.effective_n_jobs(n_jobs)
        if workers() == [1]:
            addprocs(n)
        self.parallel = parallel
        self.executor = ClusterExecutor(workers=workers())
        return n

    def submit(self, func: Any, callback: Any = None) -> Any:
        fut = self.executor.submit(func)  # type: ignore[union-attr]
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: cancel what has not started; keep the workers."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs if self.parallel else -1, parallel=self.parallel)

    def terminate(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None


def register() -> None:
    """Register the ``"clustermgr"`` joblib backend (idempotent)."""
    register_parallel_backend("clustermgr", ClusterBackend)


register()
