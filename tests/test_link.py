"""The Link (one socket, many senders, one reader) and the reading role on workers."""

import threading
import time

import zmq

import clustermgr as cm
from clustermgr.transport import Link


def _echo(ctx: zmq.Context, address: str, stop: threading.Event) -> None:
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"hello")  # so the ROUTER learns this peer's routing id
    while not stop.is_set():
        if sock.poll(50):
            sock.send_multipart(sock.recv_multipart())
    sock.close(linger=0)


def test_many_senders_and_one_reader_lose_no_message_and_no_wakeup():
    """Senders take the socket's readable edge when they send: the reader must still see
    every answer (each send checks for a message the reader may have missed)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    echo = threading.Thread(target=_echo, args=(ctx, f"tcp://127.0.0.1:{port}", stop))
    echo.start()
    link = Link(router)
    try:
        assert router.poll(10000)
        ident = router.recv_multipart()[0]
        senders, per = 4, 500
        got = []

        def read() -> None:
            link.take_role()
            try:
                deadline = time.monotonic() + 60
                while len(got) < senders * per and time.monotonic() < deadline:
                    frames = link.recv()
                    if frames is None:
                        link.wait(1.0)
                    else:
                        got.append(frames[1].bytes)
            finally:
                link.give_role()

        def send(k: int) -> None:
            for i in range(per):
                link.send([ident, f"{k}:{i}".encode()])

        reader = threading.Thread(target=read)
        reader.start()
        threads = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader.join(70)
        assert sorted(got) == sorted(f"{k}:{i}".encode() for k in range(senders) for i in range(per))
    finally:
        stop.set()
        echo.join(10)
        link.close(linger=0)
        ctx.term()


def test_closed_link_refuses_sends_and_wakeups_are_harmless():
    ctx = zmq.Context()
    link = Link(ctx.socket(zmq.DEALER))
    link.close()
    link.wake()  # no error, and no byte written to a closed (maybe reused) descriptor
    try:
        link.send([b"x"])
    except zmq.ZMQError as exc:
        assert exc.errno == zmq.ENOTSOCK
    else:
        raise AssertionError("a closed link accepted a send")
    ctx.term()


def _hold(fut_box, seconds):
    """Runs on a worker: owns a Future other processes fetch while this task still runs."""
    f = cm.Future()
    f.put(42)
    fut_box.put(f)
    time.sleep(seconds)
    return "done"


def test_worker_serves_what_it_owns_while_a_task_runs_long(cluster):
    """The I/O thread takes the link over from a busy main thread: a Future the worker owns
    is fetched, and a channel it owns is used, while its task still sleeps."""
    box = cm.RemoteChannel(owner=3)
    running = cm.remotecall(_hold, 2, box, 3.0)
    inner = box.take(timeout=30)
    assert inner.where == 2
    assert cm.fetch(inner, timeout=10) == 42  # answered by worker 2 during its task
    assert not running.isready()
    assert running.fetch(30) == "done"


def test_short_tasks_back_to_back_after_a_long_one(cluster):
    """The main thread takes the link back after a long task and runs the next ones itself."""
    assert cm.remotecall_fetch(time.sleep, 2, 0.3) is None
    assert [cm.remotecall_fetch(lambda i=i: i, 2) for i in range(200)] == list(range(200))
