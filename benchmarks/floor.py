"""The transport floor: a raw pyzmq DEALER/ROUTER echo with pickle protocol 5, no runtime.

Every clustermgr figure is reported next to this one, measured in the same run, because
absolute numbers move with the machine while ratios to the floor do not.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time

import zmq


def _echo_server(address: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"ready")
    while True:
        frames = sock.recv_multipart(copy=False)
        if frames[0].bytes == b"stop":
            break
        fn, args = pickle.loads(frames[0].buffer)
        sock.send(pickle.dumps(fn(*args), protocol=5))
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
        self.sock.send_multipart([self.peer, pickle.dumps((fn, args), protocol=5)])
        return pickle.loads(self.sock.recv_multipart()[1])

    def throughput(self, fn, n: int, window: int = 64) -> float:
        """Tasks per second with *window* calls in flight (one message per task)."""
        t0 = time.perf_counter()
        sent = done = 0
        while done < n:
            while sent < n and sent - done < window:
                self.sock.send_multipart([self.peer, pickle.dumps((fn, (sent,)), protocol=5)])
                sent += 1
            self.sock.recv_multipart()
            done += 1
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.sock.send_multipart([self.peer, b"stop"])
        self.proc.join(10)
        self.sock.close(linger=0)
        self.ctx.term()
