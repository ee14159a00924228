"""Turning Python objects into ZeroMQ frames and back.

Bodies are pickle protocol 5.  The C pickler goes first: it is several times faster than
cloudpickle, and its output is what cloudpickle would write for anything importable.  Its
pickle is kept unless it failed (a lambda, a local function or class) or names
``__main__`` anywhere (a function or class of the user's script, which the worker cannot
import: cloudpickle sends those by value), or a module is registered with
``cloudpickle.register_pickle_by_value``; then cloudpickle pickles it.  References that
reducers count (Futures, channels, pools: ``refs.py``) are applied once, for the pickle that
is sent (:func:`on_sent`).  Code that cloudpickle pickles by value keeps its real
file name (cloudpickle 3 writes ``<dynamic-code>``), so a traceback from a function
defined in the user's script shows its file, line and source line, as multiprocessing's
do.  Buffers of at least :data:`OUT_OF_BAND_MIN` bytes (numpy
arrays, ``PickleBuffer``, ...) leave the pickle stream and travel as separate frames that
ZeroMQ sends straight from the object's memory, so a 1 GB array is never copied into one
``bytes`` object.  On receipt, the frames' memory becomes the arrays' memory (pyzmq frames
are writable, so received arrays are writable too).  For a receiver on this host that
shares ``/dev/shm``, buffers of ``shm.MIN_BYTES`` or more go through shared memory
instead (``shm.py``: written once, mapped by the receiver), and a ``np.memmap`` travels
as a reference to its file (writes into it are shared, as joblib documents).

Callers: user threads serialize calls (``calls.py``); the worker's main thread
deserializes calls and serializes results; futures deserialize results lazily, in the
thread that fetches them, so the I/O threads only move frames.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from . import shm

#: Buffers smaller than this stay inside the pickle stream (a frame costs more than a copy).
OUT_OF_BAND_MIN = 64 * 1024
_local = threading.local()


def destination() -> int | None:
    """The process the object being serialized in this thread is for (None: unknown).
    Futures and channels read it to count the references they send (``refs.py``)."""
    return getattr(_local, "dest", None)


def on_sent(apply: Callable[[], None]) -> None:
    """Called by reducers: run *apply* once the pickle being made is the one sent (a
    first try by the C pickler may be thrown away).  Outside :func:`dumps`: at once."""
    pending = getattr(_local, "sent", None)
    if pending is None:
        apply()
    else:
        pending.append(apply)


def dumps(obj: Any, dest: int | None = None) -> list:
    """Serialize *obj* into ``[pickle_bytes, *buffers]`` (buffers are memoryviews), for
    process *dest* when it is known."""
    prev = getattr(_local, "dest", None), getattr(_local, "sent", None)
    _local.dest, _local.sent = dest, []
    try:
        frames = _dumps(obj)
        if len(frames) > 1 and shm.shares(dest):
            frames = shm.encode(frames, dest)
        applied = _local.sent
    finally:
        _local.dest, _local.sent = prev
    for apply in applied:
        apply()
    return frames


def _dumps(obj: Any) -> list:
    buffers: list = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # truthy: serialize in-band
        buffers.append(raw)
        return False

    return [pickle_bytes(obj, keep, buffers), *buffers]


def pickle_bytes(obj: Any, buffer_callback: Callable | None = None, buffers: list | None = None) -> bytes:
    """One pickle of *obj*, protocol 5: the C pickler's when it will do (see the module
    docstring), else cloudpickle's with code keeping its file name.  *buffers*: the list
    *buffer_callback* fills, emptied if the first try is thrown away."""
    picklers = _memmap_picklers() if shm.shares(destination()) and not _plain(obj) else None
    if not _by_value_modules():
        try:
            if picklers is None:
                data = pickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)
            else:
                f = io.BytesIO()
                picklers[0](f, protocol=5, buffer_callback=buffer_callback).dump(obj)
                data = f.getvalue()
        except Exception:  # noqa: BLE001 - cloudpickle may manage, or say why not
            data = None
        if data is not None and b"__main__" not in data:
            return data
        _thrown_away(buffers)
    out = io.BytesIO()
    pickler = _Pickler if picklers is None else picklers[1]
    pickler(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


_SCALARS = frozenset((int, float, complex, bool, str, bytes, type(None)))
#: types that pickle by name or as a few bytes, never holding an array (pools.py adds its
#: CachedFunction)
PLAIN_TYPES = {types.FunctionType, types.BuiltinFunctionType, type}


def _plain(obj: Any, depth: int = 3) -> bool:
    """True when *obj* surely holds no ``np.memmap`` (scalars, functions and classes, small
    containers of those): the plain C pickler then does, with no memmap reducers (a
    tiny call's common case; anything else is left to the memmap-aware pickler)."""
    t = type(obj)
    if t in _SCALARS or t in PLAIN_TYPES:
        return True
    if depth and (t is tuple or t is list) and len(obj) <= 16:
        return all(_plain(x, depth - 1) for x in obj)
    if depth and t is dict and len(obj) <= 16:
        return all(type(k) in _SCALARS and _plain(v, depth - 1) for k, v in obj.items())
    return False


def _thrown_away(buffers: list | None) -> None:
    """A try of the pickler was thrown away: so are its buffers and counted references."""
    if buffers is not None:
        buffers.clear()
    pending = getattr(_local, "sent", None)
    if pending is not None:
        pending.clear()


_with_memmaps: tuple[type, type] | None = None


def _memmap_picklers() -> tuple[type, type] | None:
    """Picklers (C, cloudpickle) that send a ``np.memmap`` by reference to its file, for
    a receiver on this host (``shm.memmap_reducers``); None while numpy is not imported."""
    global _with_memmaps
    if _with_memmaps is None:
        np = sys.modules.get("numpy")
        if np is None:
            return None
        table = shm.memmap_reducers(np)
        _with_memmaps = (
            type("_CMemmapPickler", (pickle.Pickler,),
                 {"dispatch_table": collections.ChainMap(table, copyreg.dispatch_table)}),
            type("_MemmapPickler", (_Pickler,),
                 {"dispatch_table": collections.ChainMap(table, _Pickler.dispatch_table)}))
    return _with_memmaps


def _by_value_modules() -> object:
    """The modules registered with ``cloudpickle.register_pickle_by_value`` (a private
    set of cloudpickle's; if it is ever gone, assume some are: cloudpickle then always)."""
    return getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", True)


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
