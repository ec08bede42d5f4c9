"""How a server process asks for memory, so that running short of it is a passing state.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MB),
so after a few large request bodies, the next ones come from the heap, which returns
memory to the system only from its top. Under a memory limit (a container, `ulimit -v`)
a heap fragmented by one long-lived small block then stays full: every later large
request fails, long after the burst that filled it. A fixed threshold keeps large blocks
(request bodies, JSON parse buffers) in their own mappings, returned when freed; two
arenas keep threads from reserving 64 MB of address space each.

When memory runs short all the same, `release()` has what holds rebuildable memory give it
back, wherever the MemoryError was caught.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import weakref
from typing import Any, Protocol

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's starting value, kept fixed
TRIM_THRESHOLD = 1024 * 1024
ARENAS = 2


def tune_malloc() -> bool:
    """Fix glibc malloc's thresholds for this process; False where malloc is not glibc's."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done &= mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    done &= mallopt(M_ARENA_MAX, ARENAS) == 1
    return bool(done)


class _Holder(Protocol):
    def release_memory(self) -> None: ...


# What in this process keeps memory it could give back (SQLite databases and their page
# caches), held weakly: a Database that is dropped leaves by itself.
_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def hold(holder: _Holder) -> None:
    """Register an object whose `release_memory()` gives back what it can rebuild."""
    _holders.add(holder)


def release() -> None:
    """The process ran short of memory (a MemoryError was caught and answered, wherever
    it was): every registered holder gives back what it can rebuild.

    Without it, a server whose SQLite page caches had grown into the memory left (each
    up to 64 MB, never shrinking by itself) stayed short for every request that came
    after, unless the failure happened to be in the ingest writer: a request body it
    could not buffer, or a parse it could not finish, changed nothing, and clients
    retried for as long as they would (seen in CI: 30 s of 503s, then batches given up).
    """
    for holder in list(_holders):
        try:
            holder.release_memory()
        except Exception:  # giving back memory must not fail the answer it is part of
            log.exception("could not release %r's memory", holder)
