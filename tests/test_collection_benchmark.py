"""The collection benchmark part at tiny sizes (no timing assertions): it runs alone and leaves the others' results."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

pytest.importorskip("distributed")


@pytest.mark.slow
def test_quick_collection_part_writes_its_own_block_only(tmp_path):
    from benchmarks import run

    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench:start -->\nOTHER PARTS\n<!-- bench:end -->\nb\n"
                      "<!-- bench-collection:start -->\nSTALE\n<!-- bench-collection:end -->\nc\n")
    out = tmp_path / "results.json"
    assert run.main(["--quick", "--only", "collection", "--workdir", str(tmp_path / "w"),
                     "--out", str(out), "--readme", str(readme)]) == 0
    assert not out.exists()  # the other parts' results file is left alone
    res = json.loads((tmp_path / "results_collection.json").read_text())
    (c,) = res["collection"]
    assert c["n"] == 6 and [r["workers"] for r in c["runs"]] == [1, 2]
    assert c["runs"][0]["tasks"]["summarise_adapter"] == 6 and c["speedup"] > 0
    assert set(c["cost"]) == {"per_adapter_s", "per_module_read_s", "per_module_pair_s"}
    assert all(v > 0 for v in c["cost"].values()) and "T(N, W)" in c["formula"]
    text = readme.read_text()
    assert "OTHER PARTS" in text and "STALE" not in text and "| adapters | N | modules |" in text
    assert text.endswith("<!-- bench-collection:end -->\nc\n")
    with pytest.raises(SystemExit, match="unknown parts"):
        run.main(["--quick", "--only", "colection", "--readme", ""])
