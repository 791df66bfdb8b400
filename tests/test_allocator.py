"""train.py's allocator setting: a freed large tensor's memory waits in the heap for the next one."""
import ctypes

import torch

from runtime.allocator import reuse_freed_memory


class MallocInfo(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def test_a_freed_64_mb_tensor_is_kept_for_reuse_instead_of_unmapped():
    mallinfo = ctypes.CDLL(None).mallinfo2
    mallinfo.restype = MallocInfo
    assert reuse_freed_memory()
    mapped = mallinfo().hblkhd  # bytes in blocks with a mapping of their own
    x = torch.empty(2**24)
    assert mallinfo().hblkhd == mapped  # from the heap, not a fresh mmap
    del x
    assert mallinfo().fordblks >= 2**26  # free in the heap: the next tensor's pages are already there
