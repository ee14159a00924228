"""The transport floor: a raw pyzmq DEALER/ROUTER echo with pickle protocol 5 (large
buffers out of band, zero-copy frames), no runtime.

Every clustermgr figure is reported next to this one, measured in the same run, because
absolute numbers move with the machine while ratios to the floor do not.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle

import zmq


def _dump(obj) -> list:
    """pickle-5 with large buffers out of band, as separate zero-copy frames."""
    buffers: list = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [data, *(b.raw() for b in buffers)]


def _load(frames: list):
    return pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])


def _echo_server(address: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"ready")
    while True:
        frames = sock.recv_multipart(copy=False)
        if frames[0].bytes == b"stop":
            break
        fn, args = _load(frames)
        sock.send_multipart(_dump(fn(*args)), copy=False)
    sock.close(linger=0)
    ctx.term()


class Floor:
    """One echo process; ``call`` is a pickled function call and its pickled answer."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.proc = mp.get_context("spawn").Process(target=_echo_server,
                                                   args=(f"tcp://127.0.0.1:{port}",))
        self.proc.start()
        self.peer = self.sock.recv_multipart()[0]

    def call(self, fn, *args):
        self.sock.send_multipart([self.peer, *_dump((fn, args))], copy=False)
        return _load(self.sock.recv_multipart(copy=False)[1:])

    def map(self, fn, items: list, window: int = 64) -> list:
        """``[fn(x) for x in items]``, one message per item, *window* calls in flight
        (one worker answers in order)."""
        out = []
        sent = 0
        while len(out) < len(items):
            while sent < len(items) and sent - len(out) < window:
                self.sock.send_multipart([self.peer, *_dump((fn, (items[sent],)))], copy=False)
                sent += 1
            out.append(_load(self.sock.recv_multipart(copy=False)[1:]))
        return out

    def close(self) -> None:
        self.sock.send_multipart([self.peer, b"stop"])
        self.proc.join(10)
        self.sock.close(linger=0)
        self.ctx.term()
