"""Turning Python objects into ZeroMQ frames and back.

Bodies are cloudpickle protocol 5, with one change: code pickled by value keeps its real
file name (cloudpickle 3 writes ``<dynamic-code>``), so a traceback from a function
defined in the user's script shows its file, line and source line, as multiprocessing's
do.  Buffers of at least :data:`OUT_OF_BAND_MIN` bytes (numpy
arrays, ``PickleBuffer``, ...) leave the pickle stream and travel as separate frames that
ZeroMQ sends straight from the object's memory, so a 1 GB array is never copied into one
``bytes`` object.  On receipt, the frames' memory becomes the arrays' memory (pyzmq frames
are writable, so received arrays are writable too).

Callers: user threads serialize calls (``calls.py``); the worker's main thread
deserializes calls and serializes results; futures deserialize results lazily, in the
thread that fetches them, so the I/O threads only move frames.
"""

from __future__ import annotations

import collections
import io
import pickle
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

#: Buffers smaller than this stay inside the pickle stream (a frame costs more than a copy).
OUT_OF_BAND_MIN = 64 * 1024
_local = threading.local()


def destination() -> int | None:
    """The process the object being serialized in this thread is for (None: unknown).
    Futures and channels read it to count the references they send (``refs.py``)."""
    return getattr(_local, "dest", None)


def dumps(obj: Any, dest: int | None = None) -> list:
    """Serialize *obj* into ``[pickle_bytes, *buffers]`` (buffers are memoryviews), for
    process *dest* when it is known."""
    prev = getattr(_local, "dest", None)
    _local.dest = dest
    try:
        return _dumps(obj)
    finally:
        _local.dest = prev


def _dumps(obj: Any) -> list:
    buffers: list = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # truthy: serialize in-band
        buffers.append(raw)
        return False

    return [pickle_bytes(obj, keep), *buffers]


def pickle_bytes(obj: Any, buffer_callback: Callable | None = None) -> bytes:
    """One pickle of *obj* (cloudpickle, protocol 5, code keeping its file name)."""
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


def _code_with_filename(make: Callable, args: tuple, filename: str) -> types.CodeType:
    return make(*args).replace(co_filename=filename)


def _reduce_code(code: types.CodeType) -> tuple:
    make, args = cloudpickle.Pickler.dispatch_table[types.CodeType](code)
    return _code_with_filename, (make, args, code.co_filename)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = collections.ChainMap({types.CodeType: _reduce_code},
                                          cloudpickle.Pickler.dispatch_table)


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`dumps`; accepts bytes, memoryviews or ``zmq.Frame`` objects."""
    body, *buffers = (_view(f) for f in frames)
    return pickle.loads(body, buffers=buffers)


def _view(frame: Any) -> Any:
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    return frame if buf is None else buf
