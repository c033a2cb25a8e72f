"""--tolerance: the ladder of randomized-SVD settings, each held to its tolerance against LAPACK's full SVD."""

import inspect
import json
import math

import numpy as np
import pytest

from analysis.core.randomized import (DEFAULT_TOLERANCE, EXACT, FULL_N_ITER, TOLERANCES, krylov_settings,
                                      randomized_svd)

LADDER = [t for t, _ in TOLERANCES] + [EXACT]


def _errors(svd, W, k):
    """(σ error, gap-scaled subspace error) against ``numpy.linalg.svd`` of W in float64 (the oracle).

    σ error: max_i |σ_i − σ_i,exact| / σ₁ over i ≤ k; subspace error: max over j ≤ k and both sides of
    sin θ_j · (σ_j − σ_{j+1}) / σ₁, θ_j the largest principal angle between the top-j subspaces.
    """
    U, S, Vt = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=False)
    V = Vt.T
    sigma = np.max(np.abs(svd.S - S[:k])) / S[0]
    sub = 0.0
    for j in range(1, k + 1):
        for X, Y in ((svd.U, U), (svd.V, V)):
            Xj, Yj = X[:, :j], Y[:, :j]
            sin = np.linalg.norm(Xj - Yj @ (Yj.T @ Xj), 2)  # (m, j) - (m, j) @ (j, j)
            sub = max(sub, sin * (S[j - 1] - S[j]) / S[0])
    return sigma, sub


def _flat(n, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, n)).astype(dtype)


def _decaying(n, seed=1):
    rng = np.random.default_rng(seed)
    Q1, Q2 = np.linalg.qr(rng.standard_normal((n, n)))[0], np.linalg.qr(rng.standard_normal((n, n)))[0]
    return ((Q1 * np.arange(1, n + 1) ** -0.5) @ Q2.T).astype(np.float32)  # trained-weight-like, float32


def test_none_is_todays_default():
    defaults = {n: p.default for n, p in inspect.signature(randomized_svd).parameters.items()
                if n in ("n_iter", "oversample")}
    assert krylov_settings() == krylov_settings(None) == defaults == {"n_iter": 8, "oversample": None}
    assert krylov_settings(DEFAULT_TOLERANCE) == defaults  # the default is a rung of the ladder


def test_ladder_is_ordered_and_any_tolerance_gets_the_cheapest_rung_meeting_it():
    tols, iters = zip(*TOLERANCES)
    assert list(tols) == sorted(tols, reverse=True) and list(iters) == sorted(iters)
    for t, n in TOLERANCES:
        assert krylov_settings(t)["n_iter"] == n
        assert krylov_settings(t * 0.99)["n_iter"] > n  # a little tighter: the next rung
    assert krylov_settings(0.5) == krylov_settings(tols[0])
    assert krylov_settings(3e-3) == krylov_settings(1e-3)
    assert krylov_settings(np.float32(1e-2)) == krylov_settings(1e-2)
    assert krylov_settings(1e-7) == krylov_settings(EXACT) == krylov_settings(" Exact ") == \
        {"n_iter": FULL_N_ITER, "oversample": None}


@pytest.mark.parametrize("bad", [0, 0.0, -1e-3, math.nan, math.inf, 0.51, 1, "fast", "1e-3", ""])
def test_nonsense_tolerances_raise_value_error(bad):
    with pytest.raises(ValueError, match="tolerance"):
        krylov_settings(bad)


@pytest.mark.parametrize("bad", [True, [1e-3], {"n_iter": 8}])
def test_non_numbers_raise_type_error(bad):
    with pytest.raises(TypeError, match="tolerance"):
        krylov_settings(bad)


@pytest.mark.parametrize("tol", LADDER)
@pytest.mark.parametrize("kind", ["flat64", "flat32", "decaying32"])
@pytest.mark.slow
def test_each_setting_meets_its_tolerance_against_lapack(kind, tol):
    """Seeded 300 × 300 matrices, the settings as the library applies them (``method="auto"``)."""
    W = {"flat64": lambda: _flat(300), "flat32": lambda: _flat(300, np.float32),
         "decaying32": lambda: _decaying(300)}[kind]()
    bound = 1e-12 if tol == EXACT else tol
    for k in (1, 8, 24):
        sigma, sub = _errors(randomized_svd(W, k, seed=0, **krylov_settings(tol)), W, k)
        assert sigma <= bound and sub <= bound, (kind, tol, k, sigma, sub)


@pytest.mark.parametrize("tol", [t for t, _ in TOLERANCES[:3]])
@pytest.mark.slow
def test_krylov_rungs_meet_their_tolerance_where_krylov_runs(tol):
    """A flat 800 × 800 float32 matrix, k = 24 (the hardest k for the block of 48): Krylov up to 12 iterations."""
    W, k = _flat(800, np.float32, seed=2), 24
    settings = krylov_settings(tol)
    assert 48 * (settings["n_iter"] + 1) < 800  # "auto" keeps Krylov here
    sigma, sub = _errors(randomized_svd(W, k, seed=0, **settings), W, k)
    assert sigma <= tol and sub <= tol


def test_exact_is_lapack():
    W = _flat(120, seed=3)
    a = randomized_svd(W, 10, **krylov_settings(EXACT))
    b = randomized_svd(W, 10, method="full")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("module", ["subspace", "report"])
@pytest.mark.parametrize("bad", ["0", "-1", "nan", "0.7", "fast"])
def test_cli_rejects_bad_tolerance_with_exit_2_and_one_line(module, bad, capsys):
    import importlib

    main = importlib.import_module(f"analysis.cli.{module}").main
    argv = (["a", "b"] if module == "subspace" else []) + ["--tolerance", bad]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--tolerance" in err and repr(bad) in err


def test_cli_parses_tolerance_and_help_states_default():
    from analysis.cli.report import build_parser as report_parser
    from analysis.cli.subspace import build_parser

    assert build_parser().parse_args(["a", "b"]).tolerance is None
    assert build_parser().parse_args(["a", "b", "--tolerance", "1e-4"]).tolerance == 1e-4
    assert report_parser().parse_args(["--tolerance", "EXACT"]).tolerance == EXACT
    text = " ".join(build_parser().format_help().split())
    assert "--tolerance T" in text and "default: 1e-3" in text and "'exact'" in text


def test_subspace_json_records_the_tolerance_with_a_base(peft_pair, tmp_path):
    from _synthetic import write_base_for

    from analysis.cli.subspace import main

    a, b = peft_pair
    base = tmp_path / "base.safetensors"
    write_base_for(a, base)
    for extra, want in (([], DEFAULT_TOLERANCE), (["--tolerance", "1e-2"], 1e-2)):
        js = tmp_path / f"o{len(extra)}.json"
        assert main([str(a), str(b), "--base", str(base), "--json", str(js), "--no-cache", *extra]) == 0
        assert json.loads(js.read_text())["settings"]["tolerance"] == want
    js = tmp_path / "plain.json"
    assert main([str(a), str(b), "--json", str(js)]) == 0
    assert "tolerance" not in json.loads(js.read_text())["settings"]  # no base: no W to decompose


def test_report_config_carries_the_tolerance():
    from analysis.report.compute import ReportConfig

    assert ReportConfig().tolerance == DEFAULT_TOLERANCE


# ------------------------------------------------------------------------------------------ benchmark


@pytest.mark.slow
def test_benchmark_quick_run_regenerates_its_readme_block(tmp_path):
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import tolerance

    readme, out = tmp_path / "README.md", tmp_path / "res.json"
    readme.write_text(f"intro\n{tolerance.START}\nSTALE\n{tolerance.END}\ntail\n")
    assert tolerance.main(["--quick", "--repeats", "1", "--seeds", "1", "--out", str(out),
                           "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "STALE" not in text and text.startswith("intro\n") and text.endswith(f"{tolerance.END}\ntail\n")
    assert text.count("met") >= len(TOLERANCES) and "not met" not in text
    res = json.loads(out.read_text())
    assert [r["label"] for r in res["rungs"]] == ["1e-2", "1e-3", "1e-4", "1e-6", EXACT]


def test_benchmarks_page_names_the_current_ladder():
    import os

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")
    with open(readme, encoding="utf-8") as fh:
        text = fh.read()
    block = text[text.index("<!-- bench-tolerance:start -->"):text.index("<!-- bench-tolerance:end -->")]
    for t, n in TOLERANCES:  # regenerate with python -m benchmarks.tolerance when the ladder changes
        assert f"(n_iter {n})" in block and f"{t:.0e}".replace("e-0", "e-") in block
    assert "not met" not in block
