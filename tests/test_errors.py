"""What the caller sees when user code or its data misbehave on a worker."""

import threading
import traceback

import pytest

import clustermgr as cm
from clustermgr import ClusterError, RemoteError
from clustermgr.errors import RemoteTraceback


def failing(x):
    raise ValueError(f"bad value {x}")


def test_remote_traceback_is_the_cause(cluster):
    with pytest.raises(RemoteError) as info:
        cm.remotecall_fetch(failing, 2, 7)
    err = info.value
    assert err.worker_id == 2 and "ValueError: bad value 7" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert isinstance(err.__cause__.__cause__, RemoteTraceback)
    assert "in failing" in err.__cause__.__cause__.tb
    text = "".join(traceback.format_exception(err))
    assert "in failing" in text and "bad value 7" in text


def test_exception_class_unknown_to_master_still_reads_well(cluster):
    def raise_local_class():
        class Private(Exception):
            def __reduce__(self):
                raise TypeError("cannot pickle me")
        raise Private("hidden")

    with pytest.raises(RemoteError, match="Private: hidden") as info:
        cm.remotecall_fetch(raise_local_class, 3)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_local_class" in str(info.value.__cause__)


def test_unpicklable_result(cluster):
    with pytest.raises(RemoteError, match="could not be pickled"):
        cm.remotecall_fetch(threading.Lock, 2)
    assert cm.remotecall_fetch(abs, 2, -3) == 3


class Unloadable:
    """Pickles fine on the master, fails to unpickle on the worker."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot rebuild here")


def test_body_that_fails_to_deserialize_gets_an_error_reply(cluster):
    with pytest.raises(RemoteError, match="could not be deserialized on this worker"):
        cm.remotecall_fetch(lambda x: x, 2, Unloadable())
    assert cm.remotecall_fetch(abs, 2, -4) == 4  # the connection survived


def test_errors_are_cluster_errors():
    assert issubclass(RemoteError, ClusterError)
    assert issubclass(cm.ProcessExitedError, ClusterError)
    assert issubclass(cm.LaunchError, ClusterError)
    assert issubclass(cm.AuthError, ClusterError)
