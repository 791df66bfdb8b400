"""Freed memory stays in the process for the next tensor, instead of going back to the OS.

glibc's malloc serves a block above M_MMAP_THRESHOLD (dynamic, at most 32 MB) with a fresh mmap and unmaps
it when freed, so every large tensor's pages are faulted in and zeroed again, at every step of an LM-width
SAE (benchmarks/speed.py measures both settings). PyTorch's CPU allocator does not cache, and
its performance guide's remedy is an allocator that reuses memory (jemalloc, tcmalloc through LD_PRELOAD);
this is the same for glibc from inside the process, without a restart."""
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from <malloc.h>
LARGEST_HEAP_BLOCK = 2**30  # larger blocks still get a mapping of their own


def reuse_freed_memory() -> bool:
    """Blocks up to LARGEST_HEAP_BLOCK come from the heap, which keeps up to twice that free at its top;
    returns whether the C library took it (False where it is not glibc)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library the process runs on
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK) and mallopt(M_TRIM_THRESHOLD, 2 * LARGEST_HEAP_BLOCK))
