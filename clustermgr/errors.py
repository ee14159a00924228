"""The exception hierarchy.

Every error the runtime raises on purpose derives from :class:`ClusterError`, so one
``except ClusterError`` catches them all.  Errors raised by *user code* on a worker reach the
caller as :class:`RemoteError`, with the original exception as ``__cause__`` (and, below it,
the remote traceback as text), the way ``concurrent.futures`` reports errors from its pools.
"""

from __future__ import annotations


class ClusterError(Exception):
    """Root of every error clustermgr raises on purpose."""


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in another process.

    Attached as ``__cause__`` of the re-raised original exception so that printing the
    error shows where it happened on the worker.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(ClusterError):
    """User code raised on worker ``worker_id``.

    ``__cause__`` is the original exception (or a stand-in when it could not be sent back),
    whose own ``__cause__`` is a :class:`RemoteTraceback` with the remote traceback text.
    """

    def __init__(self, worker_id: int, message: str) -> None:
        super().__init__(worker_id, message)
        self.worker_id = worker_id
        self.message = message

    def __str__(self) -> str:
        return f"on worker {self.worker_id}: {self.message}"

    def __reduce__(self):  # keep __cause__ chains intact across processes
        return (_rebuild_remote_error, (self.worker_id, self.message, self.__cause__))


def _rebuild_remote_error(worker_id: int, message: str, cause: BaseException | None) -> RemoteError:
    err = RemoteError(worker_id, message)
    err.__cause__ = cause
    return err


class ProcessExitedError(ClusterError):
    """The worker that held a call is gone.

    ``worker_id`` names it; ``cause`` says what the runtime or its manager knows (exit
    code, signal, missed heartbeats, scheduler state); ``log_tail`` holds the last lines of
    its log when the manager keeps one.

    ``infrastructure`` is non-empty when the worker was lost to the infrastructure, not
    to the code it ran: its walltime, a preemption, a node failure, or its retirement by
    ``adapt`` (it then names which).  Schedulers re-queue such calls without charging
    the retries meant for errors of the code (``pmap``'s ``infra_retries``).
    """

    def __init__(self, worker_id: int, cause: str = "unknown cause", log_tail: str = "",
                 infrastructure: str = "") -> None:
        super().__init__(worker_id, cause, log_tail, infrastructure)
        self.worker_id = worker_id
        self.cause = cause
        self.log_tail = log_tail
        self.infrastructure = infrastructure

    def __str__(self) -> str:
        text = f"worker {self.worker_id} exited: {self.cause}"
        if self.infrastructure:
            text += f" [lost to the infrastructure: {self.infrastructure}]"
        if self.log_tail:
            text += "\n--- last lines of its log ---\n" + self.log_tail.rstrip()
        return text


class LaunchError(ClusterError):
    """Workers could not be started or did not join in time.

    ``joined`` lists the ids of workers of the same ``addprocs`` call that did join; they
    stay in the cluster and usable.
    """

    def __init__(self, message: str, joined: list[int] | None = None) -> None:
        super().__init__(message)
        self.joined = list(joined or [])


class DecodeError(ClusterError):
    """A call or a result could not be deserialized where it arrived (the original error,
    even a ``SystemExit`` raised while unpickling, is the ``__cause__``)."""


class AuthError(ClusterError):
    """A peer could not prove it holds the cluster secret, or its versions do not match."""


class ProtocolError(ClusterError):
    """A frame on the wire is malformed; the message is dropped, the connection kept."""


class TopologyError(ClusterError):
    """The cluster's topology forbids this call (e.g. worker to worker under "master_worker")."""


class ChannelClosedError(ClusterError):
    """``put`` on a closed RemoteChannel, or ``take``/``fetch`` on a closed, empty one."""


class CallRevoked(ClusterError):
    """A call its scheduler withdrew before it started (to run it on a worker that is free):
    the pipelining schedulers (pmap, ClusterExecutor) send it elsewhere; users never see it."""


class Preempted(BaseException):
    """Raised into a running task when its worker is preempted and the task's
    ``checkpoint()`` (see ``clustermgr.checkpoint``) returned ``resume``, the call to run in
    its place.  A ``BaseException``, as ``KeyboardInterrupt``: an ``except Exception`` in the
    task does not swallow it.  Schedulers run ``resume`` elsewhere; users never see it."""

    def __init__(self, resume: object) -> None:
        super().__init__(resume)
        self.resume = resume
