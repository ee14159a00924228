"""Same-host shared memory for large out-of-band buffers.

A message's out-of-band buffers (numpy arrays, ``PickleBuffer``; see ``serialize.py``)
of at least :data:`MIN_BYTES` go through ``/dev/shm`` instead of the TCP link when the
receiver shares this process's ``/dev/shm``.  That is detected, not assumed: a worker
writes a probe file with a random token before it authenticates and names it in its AUTH;
the master reads it back (same file system, same user) and says in WELCOME whether the
link shares memory.  A container with its own ``/dev/shm``, another host, or another user
fails the probe and keeps the TCP path.

The path of one buffer::

    sender:   write the bytes once into a segment   clustermgr-<pid>-<stamp>-<n>
              hard-link it for this message         clustermgr-<pid>-<stamp>-<n>.<k>
              send [MARK + table + pickle, b"", ...] (the table names the links)
    receiver: map each link copy-on-write, unlink it, and give the pickle the mapping
              (zero-copy: a received array's memory is the segment's)

Each message owns its own link name, which the receiver unlinks as soon as it has mapped
it, so the kernel frees a segment when its last name and last mapping are gone: when the
last array using it is dropped.  The sender keeps a segment's first name while the object
the buffer belongs to lives (a weak reference; a cache of at most :data:`CACHE_BYTES`), so
an array passed to many tasks is written once per host and each task maps the same pages;
before a segment is reused its bytes are compared with the object's (``memcmp``), so an
array changed since is written anew.  Receivers map copy-on-write: a task that writes into
its argument changes only its own copy, as with a pickled argument.

Nothing is left behind: names carry the creator's pid and start time.  A sender unlinks the
links a peer never took when that peer dies (:func:`forget`), every process unlinks what it
still holds when it leaves (:func:`release`), and :func:`sweep` removes the segments of
processes that no longer exist (run by a master when it starts and exits, by a worker that
lost its master, and by the test suite), which covers ``kill -9`` of anyone.
A worker that leaves while its master lives leaves the links it sent (its last RESULT may
still be on its way); the master removes what that worker wrote once it is gone.

Callers: ``serialize.dumps`` (:func:`shares`, :func:`encode`), ``Node.dispatch``
(:func:`adopt`), the handshake (:func:`probe`, :func:`check_probe`, :func:`enable`),
``Node.fail_target`` (:func:`forget`), exit paths (:func:`release`, :func:`sweep`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import mmap
import os
import re
import stat
import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .digest import compare_digest
from .errors import ClusterError

log = logging.getLogger("clustermgr")

#: Where segments live (a tmpfs on Linux).  CLUSTERMGR_SHM_DIR moves it (tests).
DIR = os.environ.get("CLUSTERMGR_SHM_DIR", "/dev/shm")
#: Buffers below this size travel over the link (a segment costs a few system calls).
MIN_BYTES = int(os.environ.get("CLUSTERMGR_SHM_MIN_BYTES", 1 << 20))
#: Segments kept for reuse while their object lives, in bytes per process.
CACHE_BYTES = int(os.environ.get("CLUSTERMGR_SHM_CACHE_BYTES", 1 << 30))
PREFIX = "clustermgr-"
#: Starts a body whose buffers are in segments (a pickle starts with b"\x80").
MARK = b"\x00cmshm\x01"
_ENTRY = struct.Struct("<HQH")  # buffer index, size, length of the name
_LINK_NAME = re.compile(r"clustermgr-\d+-\d+-\d+\.\d+")
_PROBE_NAME = re.compile(r"clustermgr-\d+-\d+-probe")

_lock = threading.RLock()
_peers: set[int] = set()  # processes that share our /dev/shm
_creators: dict[int, str] = {}  # their creator tags, where known (the master's workers)
_pending: dict[int, list[str]] = collections.defaultdict(list)  # links sent, per receiver
_cache: collections.OrderedDict[int, _Segment] = collections.OrderedDict()  # by id(object)
_cached_bytes = 0
_serial = itertools.count()
_stats = collections.Counter()
_atexit_done = False
_libc_memcmp: Any = None


def _proc_stat(pid: int) -> tuple[bytes, int]:
    """*pid*'s state letter and when it started, in clock ticks since boot
    (``/proc/PID/stat``, fields 3 and 22): exact and the same for every reader, unlike a
    wall-clock start time, which moves with the boot time the kernel derives from an
    adjusted clock."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return fields[0], int(fields[19])


def _stamp() -> str:
    """``<pid>-<start time in ticks>``: names that a reused pid cannot claim."""
    return f"{os.getpid()}-{_proc_stat(os.getpid())[1]}"


_tag = _stamp()


@dataclass
class _Segment:
    name: str
    nbytes: int
    address: int
    owner: weakref.ref
    view: Any = None  # (mmap, ctypes char) of our own mapping, made when first compared


def _path(name: str) -> str:
    return os.path.join(DIR, name)


def stats() -> dict[str, int]:
    """Counters of this process (segments written, reused, links sent, bytes...)."""
    with _lock:
        return dict(_stats)


# --- who shares our memory -------------------------------------------------------------

def probe() -> dict[str, str] | None:
    """Worker, before AUTH: write a probe file and return its name and token for AUTH."""
    token = os.urandom(16).hex()
    name = f"{PREFIX}{_tag}-probe"
    try:
        fd = os.open(_path(name), os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, token.encode())
        finally:
            os.close(fd)
    except OSError:
        return None
    return {"name": name, "token": token}


def unprobe(info: dict[str, str] | None) -> None:
    """Worker, once WELCOME (or a refusal) came: the probe file has done its job."""
    if info:
        _unlink(info["name"])


def check_probe(info: Any) -> bool:
    """Master, on an authenticated AUTH: does the worker's probe file read back here, owned
    by our user, with its token?  Then both processes share ``/dev/shm``."""
    if not isinstance(info, dict):
        return False
    name, token = info.get("name"), info.get("token")
    if not (isinstance(name, str) and _PROBE_NAME.fullmatch(name) and isinstance(token, str)
            and len(token) == 32):
        return False
    try:
        fd = os.open(_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size != 32:
            return False
        return compare_digest(os.read(fd, 64), token.encode())
    finally:
        os.close(fd)


def probe_creator(info: Any) -> str | None:
    """The creator tag (``<pid>-<stamp>``) in a checked probe's name: the names that
    process writes start with it."""
    name = info.get("name") if isinstance(info, dict) else None
    if not isinstance(name, str) or not _PROBE_NAME.fullmatch(name):
        return None
    return name[len(PREFIX):-len("-probe")]


def enable(peer: int, creator: str | None = None) -> None:
    """From now on, large buffers for *peer* go through shared memory.  *creator*: the
    peer's creator tag, so that what it leaves behind can be removed when it goes."""
    with _lock:
        _peers.add(peer)
        if creator:
            _creators[peer] = creator


def shares(dest: int | None) -> bool:
    return dest in _peers


# --- sending ---------------------------------------------------------------------------

def encode(frames: list, dest: int) -> list:
    """``[pickle, *buffers]`` for *dest*: large buffers replaced by segments (named in a
    table in front of the pickle), or *frames* as they are when none applies."""
    table = []
    out = list(frames)
    for i, buf in enumerate(frames[1:]):
        if buf.nbytes < MIN_BYTES:
            continue
        link = _link_for(buf, dest)
        if link is not None:
            table.append(_ENTRY.pack(i, buf.nbytes, len(link)) + link.encode())
            out[1 + i] = b""
    if not table:
        return frames
    out[0] = b"".join([MARK, struct.pack("<H", len(table)), *table, frames[0]])
    return out


def _link_for(buf: memoryview, dest: int) -> str | None:
    """A fresh name, for *dest* to take, of a segment holding *buf*'s bytes."""
    with _lock:
        seg = _reusable(buf)
        if seg is None:
            seg = _write(buf)
            if seg is None:
                return None
        link = f"{seg.name}.{next(_serial)}"
        try:
            os.link(_path(seg.name), _path(link))
        except OSError as exc:
            log.debug("shared memory: cannot link %s: %s", seg.name, exc)
            return None
        finally:
            if _cache.get(id(buf.obj)) is not seg:
                _unlink(seg.name)  # not kept for reuse: only the message's name is left
        sent = _pending[dest]
        sent.append(link)
        if len(sent) >= 64:  # receivers unlink what they took: forget those
            sent[:] = [n for n in sent if os.path.lexists(_path(n))]
        _stats["links"] += 1
        _stats["bytes"] += buf.nbytes
        return link


def _write(buf: memoryview) -> _Segment | None:
    name = f"{PREFIX}{_tag}-{next(_serial)}"
    try:
        fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        log.debug("shared memory: cannot create a segment in %s: %s", DIR, exc)
        return None
    _ensure_release_at_exit()
    try:
        done = 0  # buffers come from PickleBuffer.raw(): flat bytes
        while done < buf.nbytes:
            done += os.write(fd, buf[done:])
    except OSError as exc:  # /dev/shm full: this buffer takes the link
        log.debug("shared memory: writing %d bytes failed: %s", buf.nbytes, exc)
        os.close(fd)
        _unlink(name)
        return None
    os.close(fd)
    _stats["segments"] += 1
    seg = _Segment(name, buf.nbytes, 0, _dead_ref)
    _remember(buf, seg)
    return seg


def _dead_ref() -> None:
    return None


def _remember(buf: memoryview, seg: _Segment) -> None:
    """Keep *seg* for reuse while *buf*'s object lives, if it can be watched and fits."""
    global _cached_bytes
    if seg.nbytes > CACHE_BYTES or buf.readonly:
        return
    owner = buf.obj
    key = id(owner)
    try:
        seg.owner = weakref.ref(owner, lambda _, key=key, name=seg.name: _drop(key, name))
        seg.address = _address(buf)
    except (TypeError, ValueError):
        return  # bytearray and friends have no weak references: not kept
    old = _cache.pop(key, None)
    if old is not None:
        _evict(old)
    _cache[key] = seg
    _cached_bytes += seg.nbytes
    while _cached_bytes > CACHE_BYTES and _cache:
        _evict(_cache.popitem(last=False)[1])


def _reusable(buf: memoryview) -> _Segment | None:
    """The cached segment of *buf*'s object if it still holds exactly *buf*'s bytes."""
    seg = _cache.get(id(buf.obj))
    if seg is None or seg.owner() is not buf.obj or seg.nbytes != buf.nbytes or buf.readonly:
        return None
    try:
        address = _address(buf)
    except (TypeError, ValueError):
        return None
    if address != seg.address or not _same_bytes(seg, address):
        del _cache[id(buf.obj)]
        _evict(seg)
        return None
    _cache.move_to_end(id(buf.obj))
    _stats["reused"] += 1
    return seg


def _address(buf: Any) -> int:
    """Where a writable buffer's memory starts (ctypes is imported for large buffers only:
    a worker that never sends one does not carry it)."""
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _same_bytes(seg: _Segment, address: int) -> bool:
    global _libc_memcmp
    import ctypes

    if seg.view is None:
        try:
            fd = os.open(_path(seg.name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            m = mmap.mmap(fd, seg.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        seg.view = (m, ctypes.c_char.from_buffer(m))
    if _libc_memcmp is None:
        _libc_memcmp = ctypes.CDLL(None).memcmp
        _libc_memcmp.restype = ctypes.c_int
        _libc_memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return _libc_memcmp(address, ctypes.addressof(seg.view[1]), seg.nbytes) == 0


def _evict(seg: _Segment) -> None:
    global _cached_bytes
    _cached_bytes -= seg.nbytes
    if seg.view is not None:
        m, char = seg.view
        seg.view = None
        del char
        m.close()
    _unlink(seg.name)


def _drop(key: int, name: str) -> None:
    """The object a cached segment was written from is gone (any thread, from the GC)."""
    with _lock:
        seg = _cache.get(key)
        if seg is not None and seg.name == name:
            del _cache[key]
            _evict(seg)


# --- receiving -------------------------------------------------------------------------

def adopt(frames: list) -> list:
    """Receiver (``Node.dispatch``): *frames* with segments mapped in place of their empty
    frames and the table taken off the body; *frames* itself when it names no segment.
    A segment that cannot be mapped makes the body one that raises a ClusterError when
    it is loaded, so the call or Future it belongs to fails with that message."""
    view = _view(frames[1])
    if view[:len(MARK)] != MARK:
        return frames
    out = list(frames)
    try:
        entries, pos = _table(view)
        mapped = []
        for index, nbytes, name in entries:
            mapped.append((2 + index, _map(name, nbytes)))
    except (OSError, ValueError, struct.error) as exc:
        with contextlib.suppress(ValueError, struct.error):
            for _, _, name in _table(view)[0]:
                if _LINK_NAME.fullmatch(name):
                    _unlink(name)
        out[1] = _failing_pickle(f"a shared-memory buffer of this message could not be read "
                                 f"({exc}); its sender may have died or {DIR} was cleared")
        return out[:2]
    for index, segment in mapped:
        out[index] = segment
    out[1] = view[pos:]
    return out


def _view(frame: Any) -> memoryview:
    return frame if isinstance(frame, memoryview) else \
        getattr(frame, "buffer", None) or memoryview(frame)


def _table(view: memoryview) -> tuple[list[tuple[int, int, str]], int]:
    """A marked body's ``(buffer index, size, name)`` entries, and where its pickle starts."""
    (count,) = struct.unpack_from("<H", view, len(MARK))
    pos, entries = len(MARK) + 2, []
    for _ in range(count):
        index, nbytes, size = _ENTRY.unpack_from(view, pos)
        pos += _ENTRY.size
        entries.append((index, nbytes, bytes(view[pos:pos + size]).decode()))
        pos += size
    return entries, pos


def _map(name: str, nbytes: int) -> memoryview:
    if not _LINK_NAME.fullmatch(name):
        raise ValueError(f"not a segment name: {name!r}")
    path = _path(name)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != nbytes:  # mapping past its end would be a SIGBUS
            raise ValueError(f"segment {name} is not {nbytes} bytes long")
        m = mmap.mmap(fd, nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        _unlink(name)
    return memoryview(m)


def _raise_cluster_error(message: str) -> None:
    raise ClusterError(message)


class _Failing:
    def __init__(self, message: str) -> None:
        self.message = message

    def __reduce__(self) -> tuple:
        return _raise_cluster_error, (self.message,)


def _failing_pickle(message: str) -> bytes:
    import pickle

    return pickle.dumps(_Failing(message), protocol=5)


# --- cleaning up -----------------------------------------------------------------------

def forget(peer: int) -> None:
    """*peer* is gone: unlink the segments sent to it that it never took, and those it
    wrote (messages from it that were read have been mapped; later ones are not read)."""
    with _lock:
        _peers.discard(peer)
        names = _pending.pop(peer, [])
        creator = _creators.pop(peer, None)
    for name in names:
        _unlink(name)
    if creator:
        _remove_created_by(creator)


def _remove_created_by(creator: str) -> None:
    for entry in _ours():
        if _creator(entry.name) == creator:
            _remove(entry)


def _ours(directory: str | None = None) -> list[os.DirEntry]:
    try:
        return [e for e in os.scandir(directory or DIR) if e.name.startswith(PREFIX)]
    except OSError:
        return []


def _creator(name: str) -> str:
    """``<pid>-<stamp>`` of a name of ours (see :func:`_stamp`)."""
    return "-".join(name[len(PREFIX):].split("-")[:2])


def _remove(entry: os.DirEntry) -> int:
    if entry.is_dir(follow_symlinks=False):  # a joblib call's memmap folder
        import shutil

        shutil.rmtree(entry.path, ignore_errors=True)
        return 1
    try:
        os.unlink(entry.path)
        return 1
    except OSError:
        return 0


def release(sent: bool = True) -> None:
    """Unlink the names this process still holds (it is leaving).  ``sent=False`` keeps
    the links sent to peers, for a process that leaves while its master lives: its last
    messages may still be on their way, and the master removes them once it has read them."""
    with _lock:
        names = [n for out in _pending.values() for n in out] if sent else []
        if sent:
            _pending.clear()
        while _cache:
            _evict(_cache.popitem()[1])
    for name in names:
        _unlink(name)


def sweep(directory: str | None = None) -> int:
    """Unlink the segments and probes of processes that no longer exist; returns how many."""
    alive: dict[str, bool] = {}  # per creator: one look at its process
    removed = 0
    for entry in _ours(directory):
        creator = _creator(entry.name)
        if creator not in alive:
            alive[creator] = _alive(creator)
        if not alive[creator]:
            removed += _remove(entry)
    return removed


def leftovers(directory: str | None = None) -> list[str]:
    """Names of ours in the directory whose creator is dead (what :func:`sweep` removes)."""
    return [e.name for e in _ours(directory) if not _alive(_creator(e.name))]


def _alive(creator: str) -> bool:
    try:
        pid, started = (int(x) for x in creator.split("-"))
        state, ticks = _proc_stat(pid)
        return ticks == started and state != b"Z"  # a zombie has ended
    except PermissionError:  # another user's process we may not look at: leave its files
        return True
    except (ValueError, IndexError, OSError):
        return False


def _unlink(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_path(name))


def _ensure_release_at_exit() -> None:
    global _atexit_done
    if not _atexit_done:
        _atexit_done = True
        atexit.register(release)


def _after_fork_in_child() -> None:
    """A forked child owns none of its parent's names and shares memory with no one yet."""
    global _tag, _cached_bytes, _lock
    _lock = threading.RLock()
    _tag = _stamp()
    _peers.clear()
    _creators.clear()
    _pending.clear()
    _cache.clear()
    _cached_bytes = 0
    _stats.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def names_in(frames: Sequence[Any]) -> list[str]:
    """The segment names a body's table lists (tests and debugging)."""
    view = _view(frames[0])
    return [name for _, _, name in _table(view)[0]] if view[:len(MARK)] == MARK else []


# --- numpy memmaps: by reference to their file -------------------------------------------

def memmap_reducers(np: Any) -> dict:
    """A dispatch table for a pickler whose receiver shares this host: a ``np.memmap``
    travels as a reference to its file, so the receiver maps the same file and writes
    made there (modes ``r+``, ``w+``) are seen by everyone, as joblib documents."""
    return {np.memmap: _reduce_memmap}


def _reduce_memmap(a: Any) -> tuple:
    ref = _file_ref(a)
    if ref is None:  # not file-backed, or strided: its bytes, as an ndarray
        import numpy as np

        return np.asarray(a).__reduce_ex__(5)
    return _open_memmap, ref


def _file_ref(a: Any) -> tuple | None:
    import numpy as np

    mm, filename = getattr(a, "_mmap", None), getattr(a, "filename", None)
    if mm is None or not filename or not a.size or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return None
    start = np.frombuffer(mm, dtype=np.uint8).ctypes.data  # where the mapping begins
    offset = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY + (a.ctypes.data - start)
    try:
        st = os.stat(filename)
    except OSError:
        return None
    mode = "r+" if a.mode == "w+" else a.mode  # the receiver must not truncate it
    order = "C" if a.flags.c_contiguous else "F"
    return filename, a.dtype, mode, offset, a.shape, order, st.st_dev, st.st_ino


def _open_memmap(filename: str, dtype: Any, mode: str, offset: int, shape: tuple, order: str,
                 dev: int, ino: int) -> Any:
    import numpy as np

    try:
        st = os.stat(filename)
    except OSError as exc:
        raise ClusterError(f"the np.memmap file {filename} is not readable here ({exc}); "
                           "pass np.asarray(m) to send a copy of its data instead") from None
    if (st.st_dev, st.st_ino) != (dev, ino):
        raise ClusterError(f"{filename} here is not the file the sender's np.memmap maps (another "
                           "mount namespace?); pass np.asarray(m) to send a copy of its data instead")
    return np.memmap(filename, dtype=dtype, mode=mode, offset=offset, shape=shape, order=order)
