"""Turning Python objects into ZeroMQ frames and back.

Bodies are cloudpickle protocol 5.  Buffers of at least :data:`OUT_OF_BAND_MIN` bytes (numpy
arrays, ``PickleBuffer``, ...) leave the pickle stream and travel as separate frames that
ZeroMQ sends straight from the object's memory, so a 1 GB array is never copied into one
``bytes`` object.  On receipt, the frames' memory becomes the arrays' memory (pyzmq frames
are writable, so received arrays are writable too).

Callers: user threads serialize calls (``calls.py``); the worker's main thread
deserializes calls and serializes results; futures deserialize results lazily, in the
thread that fetches them, so the I/O threads only move frames.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import cloudpickle

#: Buffers smaller than this stay inside the pickle stream (a frame costs more than a copy).
OUT_OF_BAND_MIN = 64 * 1024


def dumps(obj: Any) -> list:
    """Serialize *obj* into ``[pickle_bytes, *buffers]`` (buffers are memoryviews)."""
    buffers: list = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # truthy: serialize in-band
        buffers.append(raw)
        return False

    body = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)
    return [body, *buffers]


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`dumps`; accepts bytes, memoryviews or ``zmq.Frame`` objects."""
    body, *buffers = (_view(f) for f in frames)
    return pickle.loads(body, buffers=buffers)


def _view(frame: Any) -> Any:
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    return frame if buf is None else buf
