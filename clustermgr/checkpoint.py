"""Checkpoints: a task that is preempted says how to resume.

A task offers a hook by being a callable object with a ``checkpoint(*args, **kwargs)``
method (subclass :class:`Checkpointable`, as submitit's): when its worker gets the
scheduler's warning signal (``preempt_signal``) while the task runs, the worker calls
``checkpoint`` with the task's own arguments, on the thread that runs it (between two of
its bytecodes: it can read the progress the task keeps on ``self``), and the
:class:`Resume` it returns is run instead, elsewhere, without using a retry: by ``pmap``
(one item per call), the ``ClusterExecutor`` and sessions (which store it, so a resumed
session starts from it too).  ``checkpoint`` returning None lets the task go on (it then
finishes within the warning time, or is lost with its worker and re-queued from the start).

Who calls what: the worker's signal handler (``worker/loop.py``) finds the running call
with :func:`running_call` in the frames registered by :func:`task_frame` (``execute`` and
the session's ``run_payload``), calls the hook, and raises :class:`Preempted` into the
task; the caller's scheduler reads ``Preempted.resume``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from .errors import Preempted

__all__ = ["Checkpointable", "Preempted", "Resume", "preempt_signals", "running_call", "task_frame"]


class Resume:
    """The call to run in place of a preempted task: ``Resume(fn, *args, **kwargs)``."""

    def __init__(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"Resume needs a callable, not {fn!r}")
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __repr__(self) -> str:
        return f"Resume({getattr(self.fn, '__qualname__', self.fn)!r}, ...)"


class Checkpointable:
    """Base of tasks that can be resumed.  The default ``checkpoint`` starts the task
    again with the same arguments and its current state (``self`` as it is now); override
    it to save what the task has done and resume from there."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Resume | None:
        return Resume(self, *args, **kwargs)


#: (file, function name) -> the names of (function, args, kwargs) in frames that run a
#: task.  By name, not code object: a session's worker runs a copy of ``run_payload``
#: pickled by value (the daemon runs as ``__main__``), whose code keeps both.
_TASK_FRAMES: dict[tuple[str, str], tuple[str, str, str]] = {}


def task_frame(fn: Callable, names: tuple[str, str, str] = ("f", "args", "kwargs")) -> None:
    """Register *fn* as a function whose frame runs a task, with the local names of the
    task's function and arguments (called at import by the modules that run tasks)."""
    _TASK_FRAMES[_key(fn.__code__)] = names


def _key(code: CodeType) -> tuple[str, str]:
    return code.co_filename, code.co_name


def running_call(frame: FrameType | None) -> tuple[Callable, tuple, dict] | None:
    """The innermost task running under *frame* (a signal handler's frame)."""
    while frame is not None:
        names = _TASK_FRAMES.get(_key(frame.f_code))
        if names is not None:
            local = frame.f_locals
            try:
                return local[names[0]], tuple(local[names[1]]), dict(local[names[2]])
            except KeyError:
                return None  # the frame has not decoded its call yet
        frame = frame.f_back
    return None


def preempt_signals(text: str) -> list[signal.Signals]:
    """``"USR1"``, ``"SIGUSR2,SIGTERM"``: the signals a worker takes as its scheduler's
    preemption warning (set by the manager's ``preempt_signal``)."""
    out = []
    for name in filter(None, (part.strip().upper() for part in text.split(","))):
        try:
            out.append(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        except KeyError:
            print(f"clustermgr: CLUSTERMGR_PREEMPT_SIGNAL names no signal: {name!r}", file=sys.stderr)
    return out
