"""Running one CALL where it arrives, and answering it.

Called by the worker's main thread for every task (and by the master's call pool for calls
addressed to the master).  Whatever user code does (raise, return something unpicklable,
send a body that cannot be unpickled here), the caller gets exactly one answer.  The
answer's header carries how long the call ran here, in microseconds plus one (the id field,
unused in a RESULT; 0: not measured), for the caller's pipelining window (``window.py``).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import serialize
from .calls import ErrorPayload, error_frames
from .checkpoint import task_frame
from .errors import DecodeError
from .protocol import Flag, Header, Kind, pack_header

if TYPE_CHECKING:
    from .transport import Node


def execute(node: Node, hdr: Header, frames: list) -> None:
    want_reply = bool(hdr.flags & Flag.WANT_VALUE)
    flags: int
    ran = 0
    try:
        f, args, kwargs = _decode_call(frames)
        node.in_user_code += 1  # interrupts may land only while user code runs
        started = time.perf_counter()
        try:
            value = f(*args, **kwargs)
        finally:
            node.in_user_code -= 1
            ran = 1 + int((time.perf_counter() - started) * 1e6)
    except BaseException as exc:  # noqa: BLE001 - every outcome is reported
        if not want_reply:
            _print_unreported(node, exc)
            return
        out, flags = error_frames(node.myid, exc), Flag.ERROR
    else:
        if not want_reply:
            return
        out, flags = _encode_value(node, value, hdr.src)
    flush_std()  # output the task wrote reaches the caller before its result
    node.send([pack_header(Kind.RESULT, flags, node.myid, hdr.src, ran, hdr.id), *out])


task_frame(execute)  # a preempted worker finds the running call here (checkpoint.py)


def run_local(node: Node, fut: Any, f: Callable, args: tuple, kwargs: dict) -> None:
    """A call a process makes to itself: no serialization, same error shape."""
    try:
        value = f(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001
        if fut is None:
            _print_unreported(node, exc)
        else:
            fut._set_exception(ErrorPayload(node.myid, exc).to_exception())
        return
    if fut is not None:
        fut._set_value(value)


def _decode_call(frames: list) -> tuple[Callable, tuple, dict]:
    try:
        return serialize.loads(frames[1:])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ too
        hint = " (is the module that defines it importable here?)" \
            if isinstance(exc, (ImportError, AttributeError)) else ""
        raise DecodeError(f"the call could not be deserialized on this worker: {exc!r}{hint}") from exc


def _encode_value(node: Node, value: Any, dest: int) -> tuple[list, int]:
    """The result's frames, or the error that pickling it raised (itself, as the stdlib
    reports it: a PicklingError stays one, a SystemExit from a __reduce__ too)."""
    try:
        return serialize.dumps(value, dest), Flag.NONE
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001
        if hasattr(exc, "add_note"):
            exc.add_note(f"(the result, a {type(value).__qualname__}, could not be pickled "
                         f"on process {node.myid})")
        return error_frames(node.myid, exc), Flag.ERROR


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not break the reply
            pass


def _print_unreported(node: Node, exc: BaseException) -> None:
    print(f"remote_do on process {node.myid} raised:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
