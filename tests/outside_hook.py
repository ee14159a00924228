"""Run at start-up of the outside suites' child interpreters (see outside_suites.py):
the suite module becomes importable as ``test.test_concurrent_futures`` and our executor
as ``concurrent.futures.ClusterProcessPool``, as the suites' code templates import them;
joblib's backend "clustermgr" is registered."""

import os
import sys

import test

test.__path__.append(os.environ["CLUSTERMGR_OUTSIDE_CPYTHON"])
sys.path.append(os.path.dirname(os.path.abspath(os.environ["CLUSTERMGR_OUTSIDE_HOOK"])))


def _install() -> None:
    import concurrent.futures

    def __getattr__(name, _base=getattr(concurrent.futures, "__getattr__", None)):
        if name == "ClusterProcessPool":
            from cpython_adapter import ClusterProcessPool

            return ClusterProcessPool
        if _base is None:
            raise AttributeError(name)
        return _base(name)

    concurrent.futures.__getattr__ = __getattr__


_install()
try:  # joblib's suite runs scripts that name the "clustermgr" backend
    import clustermgr.joblib_backend  # noqa: F401
except ImportError:
    pass
