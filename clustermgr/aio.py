"""asyncio forms of the calls: awaitables that never block the event loop.

A clustermgr ``Future`` is itself awaitable (``await cm.remotecall(f, 2, x)``); these are
the spelled-out forms.  The event loop is woken from the runtime's I/O thread with
``call_soon_threadsafe`` when the value arrives; the value is decoded on the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .calls import Future, remotecall, spawnat


async def remotecall_async(f: Callable, wid: int, *args: Any, **kwargs: Any) -> Any:
    """``await remotecall_async(f, wid, x)``: the value of ``f(x)`` run on *wid*."""
    return await remotecall(f, wid, *args, **kwargs)


async def spawnat_async(wid: int | str, f: Callable, *args: Any, **kwargs: Any) -> Any:
    """``spawnat`` (``"any"`` picks the least busy worker), awaited."""
    return await spawnat(wid, f, *args, **kwargs)


async def fetch_async(x: Any) -> Any:
    """The value of a Future (awaited); any other value as is (as ``fetch``)."""
    if isinstance(x, Future):
        return await x
    import asyncio

    from .calls import fetch

    return await asyncio.to_thread(fetch, x)  # a RemoteChannel: its own blocking protocol


async def pmap_async(f: Callable, *iterables: Iterable, **kwargs: Any) -> list[Any]:
    """``pmap`` in a thread of the loop's default executor: awaitable, loop stays free."""
    import asyncio

    from .mapping import pmap

    return await asyncio.to_thread(pmap, f, *iterables, **kwargs)
