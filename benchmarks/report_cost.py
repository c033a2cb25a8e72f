"""The report's time and peak memory, this tree side by side with a previous release:
``python -m benchmarks.report_cost [--ref REV]``.

Both run ``python -m analysis.report`` on the shipped checkpoints exactly as a user runs it (default threads and
jobs, the same Python), each in its own process, alternately: first with an empty SVD cache (a fresh
``XDG_CACHE_HOME``), then again with the cache that run filled (warm). The previous release is checked out
with ``git worktree`` into a temporary folder (its own code and its own ``checkpoints/``, so it reports on what
it shipped); its report goes to a temporary folder too. Recorded: wall time, the largest resident set of the
report's processes (``os.wait4``'s ``ru_maxrss``: the process, or any it started) and the peak of their
proportional set size together (``/proc/<pid>/smaps_rollup``, sampled every 0.1 s: the report forks helpers,
whose shared pages count once); the fastest of ``--repeats`` warm runs is kept.

Writes ``benchmarks/results_report_cost.json`` and regenerates the block of ``docs/benchmarks.md`` between
``<!-- bench-report:start -->`` and ``<!-- bench-report:end -->``. About 8 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.run import update_readme, write_results

__all__ = ["main", "build_parser", "measure", "render", "START", "END", "PREVIOUS"]

START, END = "<!-- bench-report:start -->", "<!-- bench-report:end -->"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The last release before the report grew the cause experiment, the control, every-layer Table 7 and merge advice.
PREVIOUS = "d688bb0"


def _tree_pss_mb(pid: int) -> float:
    """Proportional set size of ``pid`` and its descendants, MB (shared pages counted once across them); 0 where
    ``/proc`` does not tell."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += sum(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
        except (OSError, ValueError):
            continue
    return total / 1024


def measure(tree: str, out: str, cache: str) -> dict:
    """One ``python -m analysis.report`` in ``tree`` writing ``out``, with ``XDG_CACHE_HOME=cache``.

    Returns
    -------
    dict
        ``wall_s``; ``peak_rss_mb``, the largest resident set of the process or of any process it started
        (``os.wait4``'s ``ru_maxrss``); ``peak_tree_pss_mb``, the largest proportional set size of the process
        and its children together, sampled every 0.1 s (pages they share counted once: their memory together);
        and the exit code.
    """
    env = dict(os.environ, XDG_CACHE_HOME=cache, PYTHONPATH=tree)
    cmd = [sys.executable, "-m", "analysis.report", "--out", out, "--force", "--progress", "off"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_pss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""  # until the process closes it
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{tree}: the report failed (exit {code}): {err.strip().splitlines()[-1:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 0),
            "peak_tree_pss_mb": round(peak[0], 0), "exit": code}


def _memory(m: dict) -> str:
    """``"NNN MB"``, or ``"NNN MB (together NNN MB)"`` where the process tree's PSS was sampled."""
    tree = m.get("peak_tree_pss_mb")
    return f"{m['peak_rss_mb']:.0f} MB" + (f" (together {tree:.0f} MB)" if tree else "")


def render(res: dict) -> str:
    """The Markdown block for ``docs/benchmarks.md``."""
    rows = ["| | empty SVD cache | warm SVD cache |", "|---|---|---|"]
    for key, label in (("previous", f"previous release (`{res['ref']}`)"), ("current", "this tree")):
        c, w = res[key]["cold"], res[key]["warm"]
        rows.append(f"| {label} | {c['wall_s']:.0f} s, {_memory(c)} | {w['wall_s']:.0f} s, {_memory(w)} |")
    return ("\n".join(rows) + f"\n\n`python -m analysis.report` on the shipped checkpoints, each release on its own "
            f"checkpoints: wall time; peak memory as the largest resident set of any of its processes, and the "
            f"processes' proportional set size together (shared pages once; sampled every 0.1 s) ({res['machine']}; "
            f"{res['date']}; warm: the fastest of {res['repeats']}). The current report judges more (the cause experiment, the "
            "q/k/v/o control, Table 7 at every layer, the Fig. 8 grid, the merge advice against measured losses).\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report_cost", description=__doc__.split("\n")[0])
    p.add_argument("--ref", default=PREVIOUS, help=f"the previous release (default {PREVIOUS})")
    p.add_argument("--repeats", type=int, default=2, help="warm runs of each, the fastest kept (default 2)")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results_report_cost.json"))
    p.add_argument("--readme", default=os.path.join(REPO, "docs", "benchmarks.md"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = tempfile.mkdtemp(prefix="report-cost-")
    old = os.path.join(work, "previous")
    try:
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", old, args.ref], check=True,
                       stdout=subprocess.DEVNULL)
        trees = {"previous": old, "current": REPO}
        caches = {k: os.path.join(work, f"cache-{k}") for k in trees}
        res: dict = {"ref": args.ref, "repeats": args.repeats, "date": datetime.date.today().isoformat(),
                     "machine": f"{os.cpu_count()} cores, {platform.python_version()}"}
        for k, tree in trees.items():  # alternately: cold, then warm repeats
            res[k] = {"cold": measure(tree, os.path.join(work, f"out-{k}"), caches[k])}
            print(f"{k} cold: {res[k]['cold']}", flush=True)
        for _ in range(args.repeats):
            for k, tree in trees.items():
                m = measure(tree, os.path.join(work, f"out-{k}"), caches[k])
                print(f"{k} warm: {m}", flush=True)
                if "warm" not in res[k] or m["wall_s"] < res[k]["warm"]["wall_s"]:
                    res[k]["warm"] = m
        write_results(args.out, res)
        update_readme(args.readme, render(res), start=START, end=END)
        print(render(res))
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", old], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
