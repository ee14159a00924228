"""A joblib parallel backend named ``"clustermgr"``.

``import clustermgr.joblib_backend`` registers it (``import clustermgr`` does too when
joblib is already imported); then::

    with joblib.parallel_config(backend="clustermgr"):
        joblib.Parallel()(joblib.delayed(f)(x) for x in xs)   # or scikit-learn's n_jobs

runs on the cluster's workers.  With no workers yet, the first use starts ``n_jobs`` local
workers (one per CPU for ``n_jobs=-1``); they stay until ``clustermgr.shutdown()``, and a
later call with a larger ``n_jobs`` starts the missing ones.  joblib
calls ``configure`` per ``Parallel`` call, ``submit`` per batch (from its dispatch thread)
and ``terminate`` at the end; each Parallel call gets a ``ClusterExecutor`` over the
workers, which keeps them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import weakref
from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.parallel import BACKENDS

from . import shm
from .executor import ClusterExecutor, _local_factory


class ClusterBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend contract on cluster workers (see the module docstring).

    ``n_jobs`` means what joblib says: 1 runs in the calling process (joblib's sequential
    backend: no worker is started or used); k uses k workers, started locally when this
    backend started the cluster (else as many of the cluster's as there are); -1 all of
    them.  ``initializer``/``initargs`` (from ``Parallel`` or ``parallel_config``) run on
    each worker of a call.  Each batch registers this backend in its worker first, so a
    nested ``parallel_config(backend="clustermgr")`` works there.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    supports_inner_max_num_threads = False
    default_n_jobs = -1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executor: ClusterExecutor | None = None
        self.memmaps: Memmapper | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        from .cluster import nworkers, workers

        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        n_jobs = -1 if n_jobs is None else int(n_jobs)
        have = nworkers() if workers() != [1] else 0
        if have and not _started_here():  # the user's cluster: at most what it has
            return max(1, have + 1 + n_jobs) if n_jobs < 0 else min(n_jobs, have)
        cpus = len(os.sched_getaffinity(0))
        return max(cpus + 1 + n_jobs, 1) if n_jobs < 0 else n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        global _started_on
        from .cluster import addprocs, node, workers

        n = self.effective_n_jobs(n_jobs)
        if n == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        kwargs = {**self.backend_kwargs, **backend_kwargs}
        unknown = sorted(set(kwargs) - _KNOWN_KWARGS)
        if unknown:
            raise TypeError(f"the clustermgr joblib backend does not take {unknown}; it "
                            f"takes {sorted(_KNOWN_KWARGS)}")
        have = [w for w in workers() if w != 1]
        if not have and node().myid == 1:
            _started_on = weakref.ref(node())
        ours = _started_here()
        if ours and len(have) < n:
            have += addprocs(n - len(have))
        self.parallel = parallel
        # on a worker, joblib must wait through retrieve_result (it serves calls meanwhile)
        self.supports_retrieve_callback = node().myid == 1
        self.memmaps = _memmapper(kwargs)
        self.executor = ClusterExecutor(
            workers=have[:n], manager=_local_factory if ours else None,
            initializer=kwargs.get("initializer"), initargs=kwargs.get("initargs", ()))
        return n

    @property
    def _workers(self) -> ClusterExecutor | None:
        """The pool of the current call, under the name loky's backend gives its own
        (joblib's tests look for it; an abort replaces it, as loky's is)."""
        return self.executor

    def submit(self, func: Any, callback: Any = None) -> Any:
        if self.memmaps is not None:
            self.memmaps.convert(func)
        fut = self.executor.submit(_registered_call, func)  # type: ignore[union-attr]
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        """joblib waits here for a batch when ``supports_retrieve_callback`` is off: on a
        worker (a Parallel inside a task), so that the wait keeps running the calls that
        other workers' nested batches send this one, instead of deadlocking with them."""
        from .transport import current_node

        n = current_node()
        if n is not None and n.myid != 1 and not out.done():
            if not n.block_until(out, timeout):
                timeout = 0
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed or the call timed out: cancel what has not started, interrupt
        what is running (the next call must not wait behind it); keep the workers."""
        if self.executor is not None:
            running = self.executor._running_on()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
            self._close_memmaps()
            if running:
                from .cluster import interrupt

                interrupt(running)
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs if self.parallel else -1, parallel=self.parallel)

    def terminate(self) -> None:
        """End of a Parallel call (joblib calls it): the executor goes, the workers stay;
        auto-batching starts afresh for the next call, as loky's does."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        self._close_memmaps()
        self.reset_batch_stats()

    def _close_memmaps(self) -> None:
        if self.memmaps is not None:
            self.memmaps.close()
            self.memmaps = None


#: what joblib passes to process backends (max_nbytes, mmap_mode, temp_folder: Memmapper)
_KNOWN_KWARGS = {"initializer", "initargs", "verbose", "temp_folder", "context", "max_nbytes",
                 "mmap_mode", "idle_worker_timeout"}

_MMAP_MODES = (None, "r", "r+", "w+", "c")


def _memmapper(kwargs: dict) -> Memmapper | None:
    mode, limit = kwargs.get("mmap_mode", "r"), kwargs.get("max_nbytes", 1_000_000)
    if mode not in _MMAP_MODES:
        raise ValueError(f"mmap_mode={mode!r}: joblib takes one of {_MMAP_MODES}")
    if limit is not None and (not isinstance(limit, (int, float)) or limit < 0):
        raise ValueError(f"max_nbytes={limit!r}: give a number of bytes, a string such as '1M', "
                         "or None (no memmapping)")
    if mode is None or limit is None:
        return None
    return Memmapper(int(limit), mode, kwargs.get("temp_folder"))


class Memmapper:
    """joblib's auto-memmapping, for one Parallel call (``configure`` to ``terminate``):
    a numpy array of at least *max_nbytes* in a batch's arguments is written once to a
    file in the call's folder and passed as a ``np.memmap`` opened with *mmap_mode* (``r``:
    read-only), which workers on this host map by reference (``shm.memmap_reducers``);
    the folder goes at ``terminate``.  The folder: *temp_folder*, else
    ``$JOBLIB_TEMP_FOLDER``, else ``/dev/shm``, else the system's temporary folder.
    Called from joblib's dispatch thread (``submit``)."""

    def __init__(self, max_nbytes: int, mmap_mode: str, temp_folder: str | None) -> None:
        self.max_nbytes = max_nbytes
        self.mode = "r+" if mmap_mode == "w+" else mmap_mode  # reopening must not truncate
        self.root = temp_folder or os.environ.get("JOBLIB_TEMP_FOLDER")
        self.folder: str | None = None
        self.done: dict[int, tuple[Any, Any]] = {}  # id(array) -> (array, its memmap)
        self.lock = threading.Lock()

    def convert(self, batch: Any) -> None:
        items = getattr(batch, "items", None)
        np = sys.modules.get("numpy")
        if items is None or np is None:
            return
        with self.lock:
            batch.items = [(f, tuple(self._one(np, a) for a in args),
                            {k: self._one(np, v) for k, v in kwargs.items()})
                           for f, args, kwargs in items]

    def _one(self, np: Any, x: Any) -> Any:
        if type(x) is not np.ndarray or not x.size or x.nbytes < self.max_nbytes or x.dtype.hasobject:
            return x
        hit = self.done.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        path = os.path.join(self._folder(), f"{len(self.done)}.mmap")
        order = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
        data = x.T if order == "F" else np.ascontiguousarray(x)  # bytes in the file's order
        with open(path, "wb") as f:  # a plain write: faster than filling a fresh mapping
            f.write(memoryview(data).cast("B"))
        m = np.memmap(path, dtype=x.dtype, mode=self.mode, shape=x.shape, order=order)
        self.done[id(x)] = (x, m)
        return m

    def _folder(self) -> str:
        if self.folder is None:
            root = self.root
            if root is None:
                root = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
            self.folder = tempfile.mkdtemp(prefix=f"{shm.PREFIX}{shm._tag}-joblib", dir=root)
        return self.folder

    def close(self) -> None:
        with self.lock:
            self.done.clear()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None


#: the master on which this backend started the workers (it may start more, replace them)
_started_on: weakref.ref | None = None


def _started_here() -> bool:
    from .transport import current_node

    return _started_on is not None and current_node() is not None and _started_on() is current_node()


def _registered_call(func: Any) -> Any:
    """On a worker: make "clustermgr" known to joblib there, then run the batch."""
    register()
    return func()


def register() -> None:
    """Register the ``"clustermgr"`` joblib backend (idempotent)."""
    if BACKENDS.get("clustermgr") is not ClusterBackend:
        register_parallel_backend("clustermgr", ClusterBackend)


register()
