"""Issue 25, item 4: progress everywhere it takes time. A bar on a terminal; plain lines per stage elsewhere (what,
n of N, elapsed; bounded rate: first, last, at most one every interval); --quiet silences it and the notes,
never the errors."""

import argparse
import io
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from analysis.errors import InputError
from analysis.sweeps import progress as prog
from analysis.sweeps.common import progress as progress_bar
from analysis.sweeps.progress import LINE_DELAY, Progress, as_progress

from conftest import make_peft_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _lines(stream):
    """The lines written, elapsed times replaced by T."""
    return [re.sub(r"\d+(\.\d+)? s$", "T", line) for line in stream.getvalue().splitlines()]


def test_lines_name_the_stage_how_far_and_elapsed():
    out = io.StringIO()
    p = Progress("lines", stream=out)
    with p.stage("pairs"):
        assert list(p.track(range(3), desc="modules")) == [0, 1, 2]
        c = p.counter(total=2, desc="base")
        c.update()
        c.update()
        c.close()
        c.close()  # twice: nothing more
    with p.stage("writing", total=4) as st:
        st.update(4)
    assert _lines(out) == ["pairs: started", "pairs / modules: 0 of 3", "pairs / modules: 3 of 3, done in T",
                           "pairs / base: 0 of 2", "pairs / base: 2 of 2, done in T", "pairs: done in T",
                           "writing: 0 of 4", "writing: 4 of 4, done in T"]


@pytest.mark.slow
def test_short_stages_are_silent_long_ones_shown_at_a_bounded_rate():
    out = io.StringIO()
    p = Progress("lines", stream=out, delay=0.3, interval=0.5)
    with p.stage("quick"):
        pass
    for _ in p.track(range(5)):
        pass
    assert out.getvalue() == ""  # ended before the delay
    t0 = time.monotonic()
    with p.stage("base pass"):
        for _ in p.track(range(4), desc="modules"):
            time.sleep(0.6)
    took = time.monotonic() - t0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("base pass: running, ") and lines[1].startswith("base pass / modules: ")
    assert re.fullmatch(r"base pass / modules: 4 of 4, done in \d\.\d s", lines[-2])
    assert re.fullmatch(r"base pass: done in \d\.\d s", lines[-1])
    periodic = lines[2:-2]
    assert all(re.fullmatch(r"base pass / modules: [0-4] of 4, \d\.\d s", x) for x in periodic), lines
    assert len(periodic) <= took / 0.5 + 1  # at most one line per interval besides first and last


def test_a_failed_stage_prints_no_last_line_and_closes_what_it_left_open():
    out = io.StringIO()
    p = Progress("lines", stream=out)
    with pytest.raises(KeyError):
        with p.stage("findings"):
            p.counter(total=3)  # never closed by its user
            raise KeyError("x")
    assert _lines(out) == ["findings: started", "findings / modules: 0 of 3"]
    with p.stage("next"):
        pass
    assert _lines(out)[-2:] == ["next: started", "next: done in T"]  # not nested under the failed one


def test_off_writes_nothing_and_is_false():
    p = Progress("off")
    assert not p and list(p.track([1, 2])) == [1, 2]
    with p.stage("x") as st:
        st.update()
    assert progress_bar([1, 2], enabled=False) == [1, 2] and progress_bar(None, enabled=False) is None
    assert progress_bar([1], enabled=p) == [1]


def test_bar_on_a_terminal_lines_elsewhere_nothing_when_quiet():
    assert Progress.for_stream("auto", stream=_Tty()).mode == "bar"
    auto = Progress.for_stream("auto", stream=io.StringIO())
    on = Progress.for_stream("on", stream=io.StringIO())
    assert (auto.mode, auto.delay, on.mode, on.delay) == ("lines", LINE_DELAY, "lines", 0.0)
    assert not Progress.for_stream("on", quiet=True, stream=_Tty()) and not Progress.for_stream("off")
    tty = _Tty()
    bar = Progress("bar", stream=tty)
    for _ in bar.track(range(3), desc="modules"):
        pass
    assert "modules:" in tty.getvalue() and "/3 " in tty.getvalue()
    with pytest.raises(ValueError):
        Progress("loud")


def test_as_progress_gives_the_running_commands_reporter():
    assert not as_progress(None) and not as_progress(False)
    assert as_progress(True).mode == "bar"
    out = io.StringIO()
    p = Progress("lines", stream=out)
    assert as_progress(p) is p
    with p.activate():
        assert as_progress(None) is p
        with as_progress(None).stage("figures"):
            counter = progress_bar(None, enabled=None, total=2, desc="figures")
            counter.update(2)
            counter.close()
    assert not as_progress(None)
    assert _lines(out) == ["figures: started", "figures / figures: 0 of 2", "figures / figures: 2 of 2, done in T",
                           "figures: done in T"]
    time.sleep(3 * prog._TICK)
    assert not [t for t in threading.enumerate() if t.name == "progress"]  # the ticker ended


def test_the_runner_installs_the_reporter_for_library_stages(capsys):
    from analysis.cli.common import run

    def body(args):
        with as_progress(None).stage("pairs"):
            print("note: something the user may skip", file=sys.stderr)
            print("warning: something the user must see", file=sys.stderr)

    assert run(body, argparse.Namespace(debug=False, progress="on", quiet=False)) == 0
    err = capsys.readouterr().err
    assert "pairs: started" in err and "pairs: done in" in err and "note: something" in err
    assert run(body, argparse.Namespace(debug=False, progress="on", quiet=True)) == 0
    assert capsys.readouterr().err == "warning: something the user must see\n"

    def bad(args):
        print("note: before the failure", file=sys.stderr)
        raise InputError("x.json: expected a number")

    assert run(bad, argparse.Namespace(debug=False, progress="on", quiet=True)) == 2
    assert capsys.readouterr().err == "error: x.json: expected a number\n"  # errors are never silenced


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("prog")
    make_peft_adapter(root / "A", r=4, seed=1)
    make_peft_adapter(root / "B", r=2, seed=2)
    return str(root / "A"), str(root / "B")


def _run_to_file(tmp_path, *args):
    """Run a command with standard error redirected to a file (not a terminal); its exit code and that file."""
    err = tmp_path / "err.log"
    with open(err, "w") as fh:
        code = subprocess.run([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT,
                              timeout=300).returncode
    return code, err.read_text()


@pytest.mark.slow
def test_a_command_with_stderr_to_a_file_writes_stage_lines_and_quiet_writes_nothing(pair, tmp_path):
    code, err = _run_to_file(tmp_path, "analysis.subspace", *pair, "--progress", "on")
    assert code == 0 and err.splitlines() == ["modules: 0 of 4", err.splitlines()[1]]
    assert re.fullmatch(r"modules: 4 of 4, done in \d+\.\d s", err.splitlines()[1])
    code, err = _run_to_file(tmp_path, "analysis.subspace", *pair, "--progress", "on", "--quiet")
    assert code == 0 and err == ""
    code, err = _run_to_file(tmp_path, "analysis.rank", *pair, "--trials", "5")
    assert code == 0 and err == ""  # auto: nothing for work shorter than the delay


def test_auto_shows_lines_for_long_stages_in_process(pair, capsys, monkeypatch):
    from analysis.rank import main

    monkeypatch.setattr(prog, "LINE_DELAY", 0.0)  # every stage counts as long
    assert main([*pair, "--trials", "5"]) == 0
    assert "modules: 4 of 4, done in" in capsys.readouterr().err


def test_quiet_on_every_command_and_notes_silenced(pair, tmp_path, capsys):
    import importlib

    for command in ("subspace", "rank", "resize", "finetune", "intruders", "collection", "merge", "inspect",
                    "report"):
        parser = importlib.import_module(f"analysis.cli.{command}").build_parser()
        assert "--quiet" in parser._option_string_actions, command
        helptext = parser.format_help()
        assert "no progress" in " ".join(helptext.split()), command
    from analysis.cli.resize import build_parser

    assert "print only the summary line" in build_parser().format_help()  # resize's own meaning is kept
    from analysis.collection import main

    (tmp_path / "README.md").write_text("not an adapter\n")
    assert main([*pair, str(tmp_path / "README.md")]) == 0
    assert "note: " in capsys.readouterr().err
    assert main([*pair, str(tmp_path / "README.md"), "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "2 adapters" in cap.out  # the result stays on standard output
