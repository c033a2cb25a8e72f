"""Float safetensors files are read without importing torch, to the same arrays torch gives.

Oracle: safetensors' torch reader, widened as before (half precision to float32) by ``torch.Tensor.float``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.io.tensors import read_tensors


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    out = {}
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        path = tmp_path / f"{str(dt).split('.')[-1]}.safetensors"
        save_file({"a.lora_A.weight": torch.randn(4, 16, generator=g).to(dt),
                   "a.lora_B.weight": torch.randn(8, 4, generator=g).to(dt)}, str(path))
        out[dt] = path
    mixed = tmp_path / "mixed.safetensors"  # an integer tensor beside: torch reads it, as before
    save_file({"w": torch.randn(3, 3, generator=g), "steps": torch.tensor([7])}, str(mixed))
    out["mixed"] = mixed
    return out


def test_the_same_arrays_as_torch_reads(files):
    for dt, path in files.items():
        got = read_tensors(path)
        for k, t in load_file(str(path)).items():
            want = (t.float() if t.is_floating_point() and t.element_size() < 4 else t).numpy()
            assert got[k].dtype == want.dtype and np.array_equal(got[k], want), (dt, k)
            assert got[k].flags.writeable


def test_no_torch_import_for_float_files(files):
    code = ("import sys\nfrom analysis.io.tensors import read_tensors\n"
            f"for p in {[str(files[d]) for d in (torch.float32, torch.float16, torch.bfloat16)]!r}:\n"
            "    read_tensors(p)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
