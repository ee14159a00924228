"""One small adapter per system the side-by-side benchmark measures.

Every adapter offers the same operations on N workers: ``start(n)`` (returns when every
worker has answered once), ``call(fn, x)`` (one call, waited for), ``map(fn, items,
chunksize)`` (ordered results), ``pids()`` (worker process ids, for RSS) and ``stop()``.
Peers are imported only when their adapter starts (``benchmarks/requirements.txt``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any


def noop(x: Any = None) -> Any:
    return x


def nap(t: float) -> float:
    time.sleep(t)
    return t


def getpid() -> int:
    return os.getpid()


def run_chunk(fn: Callable, chunk: list) -> list:
    return [fn(x) for x in chunk]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class Adapter:
    name = "?"
    workers_max: int | None = None  # a system that only runs one worker (the floor)

    def start(self, n: int) -> None: ...
    def call(self, fn: Callable, x: Any) -> Any: ...
    def map(self, fn: Callable, items: list, chunksize: int) -> list: ...
    def pids(self) -> list[int]: ...
    def stop(self) -> None: ...
    submits = False  # has a concurrent.futures-style submit (the submit + as_completed loop)


class Floor(Adapter):
    """A raw pyzmq DEALER/ROUTER echo with pickle protocol 5: one worker, no runtime."""

    name = "raw pyzmq floor"
    workers_max = 1

    def start(self, n: int) -> None:
        from .floor import Floor as Echo

        self.echo = Echo()

    def call(self, fn: Callable, x: Any) -> Any:
        return self.echo.call(fn, x)

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        if chunksize == 1:
            return self.echo.map(fn, items)
        parts = self.echo.map(functools.partial(run_chunk, fn), chunks(items, chunksize))
        return [y for part in parts for y in part]

    def pids(self) -> list[int]:
        return [self.echo.proc.pid]

    def stop(self) -> None:
        self.echo.close()


class ClusterRemotecall(Adapter):
    name = "clustermgr (remotecall / pmap)"

    def start(self, n: int) -> None:
        import clustermgr as cm

        self.cm = cm
        cm.configure(output=None)
        self.ids = cm.addprocs(n)
        cm.everywhere(noop)

    def call(self, fn: Callable, x: Any) -> Any:
        return self.cm.remotecall_fetch(fn, self.ids[0], x)

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        return self.cm.pmap(fn, items, batch_size=chunksize)

    def pids(self) -> list[int]:
        return self.cm.everywhere(os.getpid)

    def stop(self) -> None:
        self.cm.shutdown()


class ClusterExecutorAdapter(ClusterRemotecall):
    name = "clustermgr ClusterExecutor"

    def start(self, n: int) -> None:
        super().start(n)
        self.ex = self.cm.ClusterExecutor(workers=self.ids)

    submits = True

    def call(self, fn: Callable, x: Any) -> Any:
        return self.ex.submit(fn, x).result()

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        return list(self.ex.map(fn, items, chunksize=chunksize))

    def submit_loop(self, fn: Callable, n: int) -> int:
        return _submit_loop(self.ex, fn, n)

    def stop(self) -> None:
        self.ex.shutdown()
        super().stop()


class MPPool(Adapter):
    def __init__(self, method: str) -> None:
        self.method = method
        self.name = f"multiprocessing.Pool ({method})"

    def start(self, n: int) -> None:
        import multiprocessing as mp

        self.pool = mp.get_context(self.method).Pool(n)
        self.pool.map(noop, range(n), chunksize=1)

    def call(self, fn: Callable, x: Any) -> Any:
        return self.pool.apply(fn, (x,))

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        return self.pool.map(fn, items, chunksize=chunksize)

    def pids(self) -> list[int]:
        return [p.pid for p in self.pool._pool]  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.pool.terminate()
        self.pool.join()


class StdlibExecutor(Adapter):
    name = "ProcessPoolExecutor"

    def make(self, n: int) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(n)

    def start(self, n: int) -> None:
        self.ex = self.make(n)
        list(self.ex.map(noop, range(n)))

    submits = True

    def call(self, fn: Callable, x: Any) -> Any:
        return self.ex.submit(fn, x).result()

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        return list(self.ex.map(fn, items, chunksize=chunksize))

    def submit_loop(self, fn: Callable, n: int) -> int:
        return _submit_loop(self.ex, fn, n)

    def pids(self) -> list[int]:
        return list(self.ex._processes)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class Loky(StdlibExecutor):
    name = "loky"

    def make(self, n: int) -> Any:
        from loky import ProcessPoolExecutor

        return ProcessPoolExecutor(n)

    def stop(self) -> None:
        self.ex.shutdown(wait=True)  # loky's shutdown has no cancel_futures


class Dask(Adapter):
    name = "dask.distributed"

    def start(self, n: int) -> None:
        import logging

        from dask.distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        self.client.gather(self.client.map(noop, range(n), pure=False))

    def call(self, fn: Callable, x: Any) -> Any:
        return self.client.submit(fn, x, pure=False).result()

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        if chunksize == 1:
            return self.client.gather(self.client.map(fn, items, pure=False))
        cs = chunks(items, chunksize)
        parts = self.client.gather(self.client.map(run_chunk, [fn] * len(cs), cs, pure=False))
        return [y for part in parts for y in part]

    def pids(self) -> list[int]:
        return list(self.client.run(os.getpid).values())

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()


class IPyParallel(Adapter):
    name = "ipyparallel"

    def start(self, n: int) -> None:
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=n, log_level=40)
        self.rc = self.cluster.start_and_connect_sync(activate=False)
        self.rc.wait_for_engines(n, timeout=120)
        self.view = self.rc.load_balanced_view()
        self.rc[:].apply_sync(noop)

    def call(self, fn: Callable, x: Any) -> Any:
        return self.rc[0].apply_sync(fn, x)

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        return list(self.view.map_sync(fn, items, chunksize=chunksize))

    def pids(self) -> list[int]:
        return self.rc[:].apply_sync(os.getpid)

    def stop(self) -> None:
        self.rc.close()
        self.cluster.stop_cluster_sync()


class Ray(Adapter):
    name = "ray"

    def start(self, n: int) -> None:
        import logging

        import ray

        self.ray = ray
        ray.init(num_cpus=n, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False, configure_logging=False)
        self.remote_fns: dict[Callable, Any] = {}
        ray.get([self._r(getpid).remote() for _ in range(n)])
        self.n = n

    def _r(self, fn: Callable) -> Any:
        if fn not in self.remote_fns:
            self.remote_fns[fn] = self.ray.remote(num_cpus=1)(fn)
        return self.remote_fns[fn]

    def call(self, fn: Callable, x: Any) -> Any:
        return self.ray.get(self._r(fn).remote(x))

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        if chunksize == 1:
            return self.ray.get([self._r(fn).remote(x) for x in items])
        run = self._r(run_chunk)
        parts = self.ray.get([run.remote(fn, c) for c in chunks(items, chunksize)])
        return [y for part in parts for y in part]

    def pids(self) -> list[int]:
        return sorted(set(self.ray.get([self._r(getpid).remote() for _ in range(self.n * 4)])))

    def stop(self) -> None:
        self.ray.shutdown()


def _submit_loop(ex: Any, fn: Callable, n: int) -> int:
    """A loop of ``submit`` then ``as_completed`` over *n* tiny tasks; the sum checks them."""
    from concurrent.futures import as_completed

    futs = [ex.submit(fn, i) for i in range(n)]
    return sum(f.result() for f in as_completed(futs))


def all_adapters() -> list[Adapter]:
    return [Floor(), ClusterRemotecall(), ClusterExecutorAdapter(), MPPool("fork"), MPPool("spawn"),
            StdlibExecutor(), Loky(), Dask(), IPyParallel(), Ray()]
