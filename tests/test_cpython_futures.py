"""CPython's own ``test_concurrent_futures`` (3.11), its process-pool test classes pointed
at ClusterExecutor.  The suite is not in this repository: ``outside_suites`` fetches it.

Each mixin the stdlib multiplies across its ProcessPool start methods is run once here,
with ``ClusterProcessPool`` (``cpython_adapter.py``) as the executor, and the suite's own
``futures.ProcessPoolExecutor`` references point at it too, so the tests that construct
one directly test ours.  ``EXCUSED`` lists each test that does not apply, with the reason;
an excused test is about another library's internals, never about behaviour.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import types
import unittest
from concurrent import futures

from cpython_adapter import ClusterProcessPool
from outside_suites import cpython_tests_dir, install_hook

install_hook()
import test  # noqa: E402 - the interpreter's own test package (test.support)

test.__path__.append(str(cpython_tests_dir()))
from test import test_concurrent_futures as cf  # noqa: E402

# The suite's "futures.ProcessPoolExecutor" is ours from here on.
cf.futures = types.SimpleNamespace(**{**{k: getattr(futures, k) for k in futures.__all__},
                                      "ProcessPoolExecutor": ClusterProcessPool,
                                      "process": futures.process})

#: test name -> why it does not apply to ClusterExecutor
_PROCESSES = ("reads the stdlib pool's private _processes table of multiprocessing.Process "
              "objects; ours has cluster workers (the behaviour: tests/test_executor.py)")
EXCUSED: dict[str, str] = {
    "test_max_workers_too_large": "Windows' 61-process limit of the stdlib pool (the test "
                                  "skips itself off Windows)",
    "test_context_manager_shutdown": _PROCESSES,
    "test_del_shutdown": _PROCESSES + " and _call_queue",
    "test_processes_terminate": _PROCESSES,
    "test_shutdown_no_wait": _PROCESSES,
    "test_idle_process_reuse_one": _PROCESSES,
    "test_idle_process_reuse_multiple": _PROCESSES,
    "test_saturation": _PROCESSES,
    "test_max_tasks_per_child": _PROCESSES,
    "test_killed_child": _PROCESSES + "; and ours, on purpose, fails only the dead worker's "
                         "futures and replaces it where the stdlib pool breaks",
    "test_max_tasks_per_child_defaults_to_spawn_context": "checks the stdlib pool's private "
                                                          "_mp_context start method",
}

MIXINS = [cf.InitializerMixin, cf.FailingInitializerMixin, cf.ProcessPoolShutdownTest,
          cf.WaitTests, cf.AsCompletedTests, cf.ProcessPoolExecutorTest, cf.ExecutorDeadlockTest]


class ClusterContext:
    """The multiprocessing context the suite's tests make their Queues, Semaphores and
    Events with.  Those of a plain context reach only processes multiprocessing starts
    itself; on a cluster, Manager proxies are the objects that travel (workers share the
    master's authkey), so this context makes those, and is a spawn context otherwise."""

    _manager = None

    def __init__(self) -> None:
        self._base = mp.get_context("spawn")

    @classmethod
    def manager(cls):
        if cls._manager is None:
            import conftest

            cls._manager = mp.get_context("spawn").Manager()
            conftest.HELPER_PIDS.add(cls._manager._process.pid)
        return cls._manager

    def __getattr__(self, name):
        if name in ("Queue", "JoinableQueue", "Semaphore", "BoundedSemaphore", "Event",
                    "Lock", "RLock", "Condition", "Barrier"):
            return getattr(self.manager(), name)
        return getattr(self._base, name)


class ClusterMixin(cf.ExecutorMixin):
    executor_type = ClusterProcessPool
    ctx = "spawn"

    def get_context(self):
        return ClusterContext()


def _name(mixin: type) -> str:
    base = mixin.__name__
    for suffix in ("Mixin", "Tests", "Test"):
        base = base.removesuffix(suffix)
    return f"Cluster{base}Test"


for _mixin in MIXINS:
    _cls = type(_name(_mixin), (_mixin, ClusterMixin, cf.BaseTestCase), {"__module__": __name__})
    for _test, _why in EXCUSED.items():
        if hasattr(_cls, _test):
            setattr(_cls, _test, unittest.skip(f"excused: {_why}")(getattr(_cls, _test)))
    globals()[_cls.__name__] = _cls
del _cls, _mixin  # pytest would collect the loop variable as one more class


def setUpModule() -> None:
    import clustermgr.cluster

    clustermgr.cluster.node()  # the master's threads exist before the suite counts threads
    ClusterContext.manager()  # and so does the Manager's
    unittest.addModuleCleanup(clustermgr.cluster.shutdown)
    unittest.addModuleCleanup(lambda: ClusterContext.manager().shutdown())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(unittest.main())
