"""reuse_freed_memory: a module's arrays reuse the pages of the last one's (no page faults each time)."""

import subprocess
import sys

import pytest

from analysis.core.allocator import reuse_freed_memory

_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "reuse":
    from analysis.core.allocator import reuse_freed_memory
    assert reuse_freed_memory() is True and reuse_freed_memory() is True  # applied, idempotent
n = (3 << 20) // 8  # arrays of 3 and 1.5 MiB, as one module's factors and products: above malloc's mmap threshold
def module():
    x = np.ones(n); y = np.ones(n // 2); z = x[: n // 2] + y
module()  # the first may fault its pages in
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    module()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_arrays_are_reused_without_new_page_faults():
    """Ten more 'modules' after the first: fresh pages each time by default, none once freed memory is kept."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "reuse")}
    pages = 10 * (3 << 20) * 2 // 4096  # x, y and z of ten modules, in 4 KiB pages
    assert faults["default"] > pages // 2  # the default: the pages of every module faulted in again
    assert faults["reuse"] < pages // 50


def test_reuse_freed_memory_is_idempotent():
    first = reuse_freed_memory()
    assert reuse_freed_memory() is first
    assert first is sys.platform.startswith("linux") or first is False
