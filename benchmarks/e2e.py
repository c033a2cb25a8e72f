"""End to end: the command line and the base-weight analyses as fresh processes, with peak RSS.

Every measurement is a child process; its wall time is taken around
``Popen`` … ``os.wait4`` and its peak resident set is the child's own
``VmHWM`` (``/proc/self/status``), written by a wrapper at exit (``ru_maxrss``
would include the parent's resident set at fork time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["run_child", "cli_vs_load", "busy_machine", "import_times", "base_weights", "REPO", "PIN_VARS"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LOAD_FILES = (
    "import sys, torch\n"
    "from safetensors.torch import load_file\n"
    "tensors = [load_file(p) for p in sys.argv[1:]]\n"
    "print(sum(t.numel() for d in tensors for t in d.values()))\n"
)
# the same, then one element of every 4 KiB page of every tensor summed: load_file maps the file and
# does not read it, so this is the time to actually bring the bytes in (informational)
_LOAD_TOUCH = _LOAD_FILES + (
    "print(sum(float(t.reshape(-1).view(torch.uint8)[::4096].sum()) for d in tensors for t in d.values()))\n"
)


#: The variables that pin BLAS / OpenMP thread pools (set by ``--threads N`` or the "pinned" contenders).
PIN_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


# Runs ``python -m MOD ARGS`` or ``python -c CODE ARGS`` unchanged, and at exit writes the process's
# peak resident set (VmHWM, KiB) to a file. ru_maxrss from wait4 cannot be used alone: Linux folds the
# parent's resident set at fork time into the child's maxrss, so a big benchmark process would inflate it.
_PEAK = (
    "import atexit, runpy, sys\n"
    "out = sys.argv[1]\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as fh:\n"
    "        kib = [ln.split()[1] for ln in fh if ln.startswith('VmHWM:')]\n"
    "    with open(out, 'w') as fh:\n"
    "        fh.write(kib[0] if kib else '')\n"
    "atexit.register(_peak)\n"
    "mode, target = sys.argv[2], sys.argv[3]\n"
    "if mode == '-m':\n"
    "    sys.argv = [target] + sys.argv[4:]\n"
    "    runpy.run_module(target, run_name='__main__', alter_sys=True)\n"
    "else:\n"
    "    sys.argv = ['-c'] + sys.argv[4:]\n"
    "    exec(compile(target, '<string>', 'exec'), {'__name__': '__main__'})\n"
)


def run_child(argv, *, cwd=REPO, timeout=3600, env=None):
    """Run ``argv`` (``[python, "-m" | "-c", target, *args]``); return ``{"wall_s", "maxrss_bytes", "rc",
    "stdout", "stderr"}``, the peak RSS from the child's own VmHWM. ``env``: variables set (or, with
    ``None`` values, removed) on top of the benchmark's environment."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        if len(argv) >= 3 and argv[1] in ("-m", "-c") and os.path.exists("/proc/self/status"):
            argv = [argv[0], "-c", _PEAK, peak.name, *argv[1:]]
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=_env(env))
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            p.wait()
            raise
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        with open(peak.name) as fh:
            hwm = fh.read().strip()
        rss = int(hwm) * 1024 if hwm else int(ru.ru_maxrss) * 1024
        res = {"wall_s": wall, "maxrss_bytes": rss, "rc": p.returncode,
               "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed with exit code {res['rc']}: {res['stderr'][-2000:]}")
    return res


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def cli_vs_load(a, b, workdir, *, repeats=3, log=print):
    """Time ``python -m analysis.subspace a b --json …`` next to ``import torch`` + ``load_file`` of both.

    Runs are interleaved; medians of wall time, maximum of peak RSS.
    """
    a_file = os.path.join(a, "adapter_model.safetensors")
    b_file = os.path.join(b, "adapter_model.safetensors")
    out_json = os.path.join(workdir, "subspace.json")
    load, cli, touch = [], [], []
    for _ in range(repeats):
        load.append(run_child([sys.executable, "-c", _LOAD_FILES, a_file, b_file]))
        touch.append(run_child([sys.executable, "-c", _LOAD_TOUCH, a_file, b_file]))
        cli.append(run_child([sys.executable, "-m", "analysis.subspace", a, b, "--json", out_json,
                              "--progress", "off", "--force"]))
    with open(out_json) as fh:
        n_mod = len(json.load(fh)["modules"])
    rec = {"a": os.path.basename(a), "b": os.path.basename(b), "bytes_a": os.path.getsize(a_file), "bytes_b": os.path.getsize(b_file),
           "modules": n_mod, "repeats": repeats,
           "t_load_s": _median([x["wall_s"] for x in load]), "t_cli_s": _median([x["wall_s"] for x in cli]),
           "t_load_all_s": [x["wall_s"] for x in load], "t_cli_all_s": [x["wall_s"] for x in cli],
           "t_load_touch_s": _median([x["wall_s"] for x in touch]),
           "rss_load_bytes": max(x["maxrss_bytes"] for x in load),
           "rss_load_touch_bytes": max(x["maxrss_bytes"] for x in touch),
           "rss_cli_bytes": max(x["maxrss_bytes"] for x in cli)}
    rec["ratio_time"] = rec["t_cli_s"] / rec["t_load_s"]
    rec["ratio_rss_larger"] = rec["rss_cli_bytes"] / max(rec["bytes_a"], rec["bytes_b"])
    log(f"e2e {os.path.basename(a)} vs {os.path.basename(b)}: cli {rec['t_cli_s']:.2f} s, "
        f"torch+load_file {rec['t_load_s']:.2f} s (x{rec['ratio_time']:.2f}); peak RSS cli "
        f"{rec['rss_cli_bytes'] / 2**20:.0f} MiB = {rec['ratio_rss_larger']:.2f} x larger adapter, "
        f"load_file {rec['rss_load_bytes'] / 2**20:.0f} MiB")
    return rec


_HOG = "while True:\n    pass\n"


def busy_machine(a, b, workdir, *, hogs=2, repeats=3, log=print):
    """The 7B pair's CLI on a busy machine: default environment against BLAS pinned to one thread.

    ``hogs`` CPU-bound processes (``while True: pass``) run throughout; the two contenders are interleaved
    (their order alternating), so both see the same load. The default contender runs without any of
    :data:`PIN_VARS` (whatever the benchmark was started with); the pinned one with all of them = 1.
    """
    out_json = os.path.join(workdir, "subspace_busy.json")
    cli = [sys.executable, "-m", "analysis.subspace", a, b, "--json", out_json, "--progress", "off", "--force"]
    unpinned = {v: None for v in PIN_VARS}
    pinned = {v: "1" for v in PIN_VARS}
    procs = [subprocess.Popen([sys.executable, "-c", _HOG], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(hogs)]
    dflt, pin = [], []
    try:
        time.sleep(1.0)
        for i in range(repeats):
            order = ((dflt, unpinned), (pin, pinned)) if i % 2 == 0 else ((pin, pinned), (dflt, unpinned))
            for acc, env in order:
                acc.append(run_child(cli, env=env)["wall_s"])
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    from analysis.core.threads import available_cores

    rec = {"hogs": hogs, "repeats": repeats, "t_default_s": _median(dflt), "t_pinned_s": _median(pin),
           "t_default_all_s": dflt, "t_pinned_all_s": pin, "cores": available_cores(),
           "jobs": available_cores()}
    rec["ratio"] = rec["t_default_s"] / rec["t_pinned_s"]
    log(f"busy machine ({hogs} CPU-bound processes): default {rec['t_default_s']:.2f} s, pinned to one BLAS "
        f"thread {rec['t_pinned_s']:.2f} s (x{rec['ratio']:.2f})")
    return rec


_IMPORT_PROBE = (
    "import sys, time\n"
    "t = time.perf_counter()\n"
    "import {mod}\n"
    "dt = time.perf_counter() - t\n"
    "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'scipy', 'safetensors', 'tqdm') if m in sys.modules]\n"
    "print(dt, ','.join(heavy))\n"
)


def import_times(*, repeats=3):
    """Median in-process import time of ``analysis``, the CLI module and torch, and what they pull in."""
    out = {}
    for mod in ("analysis", "analysis.cli.subspace", "pandas", "torch"):
        runs = [run_child([sys.executable, "-c", _IMPORT_PROBE.format(mod=mod)])["stdout"].split()
                for _ in range(repeats)]
        out[mod] = {"t_s": _median([float(x[0]) for x in runs]),
                    "heavy_imported": (runs[0][1].split(",") if len(runs[0]) > 1 else [])}
    out["python_startup_s"] = _median([run_child([sys.executable, "-c", "pass"])["wall_s"]
                                       for _ in range(repeats)])
    return out


# the I/O floor: each tensor's bytes read into a fresh array (bf16 as uint16: no conversion, no checks)
_READ_BASE = (
    "import sys, json, time, struct\n"
    "import numpy as np\n"
    "folder = sys.argv[1]\n"
    "wm = json.load(open(folder + '/model.safetensors.index.json'))['weight_map']\n"
    "names = json.loads(sys.argv[2])\n"
    "t = time.perf_counter(); n = 0\n"
    "by = {}\n"
    "[by.setdefault(wm[k + '.weight'], []).append(k + '.weight') for k in names]\n"
    "for f, keys in by.items():\n"
    "    with open(folder + '/' + f, 'rb') as fh:\n"
    "        (h,) = struct.unpack('<Q', fh.read(8)); head = json.loads(fh.read(h))\n"
    "        for k in keys:\n"
    "            b, e = head[k]['data_offsets']; fh.seek(8 + h + b)\n"
    "            n += np.fromfile(fh, dtype='<u2', count=(e - b) // 2).size\n"
    "print(time.perf_counter() - t, n)\n"
)

# the same tensors through torch: safe_open(...).get_tensor maps the file, clone() reads the bytes
_READ_BASE_TORCH = (
    "import sys, json, time, torch\n"
    "from safetensors import safe_open\n"
    "folder = sys.argv[1]\n"
    "wm = json.load(open(folder + '/model.safetensors.index.json'))['weight_map']\n"
    "names = json.loads(sys.argv[2])\n"
    "t = time.perf_counter(); n = 0\n"
    "by = {}\n"
    "[by.setdefault(wm[k + '.weight'], []).append(k + '.weight') for k in names]\n"
    "for f, keys in by.items():\n"
    "    with safe_open(folder + '/' + f, framework='pt') as fh:\n"
    "        for k in keys:\n"
    "            n += fh.get_tensor(k).clone().numel()\n"
    "print(time.perf_counter() - t, n)\n"
)

_ANALYSE_BASE = (
    "import sys, json, time\n"
    "t0 = time.perf_counter()\n"
    "from analysis import load_adapter\n"
    "from analysis.sweeps.adapter import analyse_adapter\n"
    "import pandas  # noqa: the toolkit's dependencies loaded before the clock, as in a session\n"
    "ad = load_adapter(sys.argv[1], lazy=True)\n"
    "t = time.perf_counter()\n"
    "sw = analyse_adapter(ad, base=sys.argv[2], layers=sys.argv[3], n_random=int(sys.argv[4]))\n"
    "dt = time.perf_counter() - t\n"
    "print(dt, len(sw.frame), float(sw.frame['amplification'].median()))\n"
)

_TOOLKIT_READ = (
    "import sys, json, time\n"
    "from analysis.io.base import open_base\n"
    "names = json.loads(sys.argv[2])\n"
    "t = time.perf_counter(); n = 0\n"
    "with open_base(sys.argv[1]) as b:\n"
    "    for name, W in b.weights(names):\n"
    "        n += W.size\n"
    "print(time.perf_counter() - t, n)\n"
)


def _flops(shape_list, k, *, n_iter=8, n_random=10):
    """Flops of analyse_adapter's W work with the default randomized SVD (block Krylov, block
    max(2k, k + 10, 48), n_iter = 8) and the projections ‖Uᵀ W V‖."""
    total = 0
    for m, n in shape_list:
        p = max(2 * k, k + 10, 48)
        total += 2 * m * n * p * (2 * n_iter + 1)  # W Ω, then n_iter × (Wᵀ Q, W Z)
        total += 2 * m * n * p * (n_iter + 1)  # Rayleigh–Ritz Kᵀ W with (n_iter + 1) p columns
        total += 2 * m * n * k * (2 + n_random)  # ‖Uᵀ W V‖ for ΔW's, W's and n_random random bases
    return total


def base_weights(adapter, base, names, shapes, *, layers, r, n_random=10, repeats=1, read_repeats=3, log=print,
                 second=None, cache_dir=None):
    """Time analyse_adapter(..., base=...) on the given layers next to the pure read of the same tensors.

    With ``second`` (another adapter of the same rank) and ``cache_dir``: the first run starts from an empty
    SVD cache in ``cache_dir`` (cold), then ``second`` is analysed against the same base with the cache
    warm. Without them the cache is off (``LORA_SUBSPACE_CACHE`` pointed at an empty folder each run).
    """
    import shutil

    lay = ",".join(str(i) for i in range(layers))
    names_json = json.dumps(names)
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "lora-subspace-bench-cache")
    cenv = {"LORA_SUBSPACE_CACHE": cache_dir}
    reads, preads, treads, runs, warm = [], [], [], [], []
    for i in range(max(repeats, read_repeats)):  # interleaved; the reads are cheap: repeated more
        if i < read_repeats:
            reads.append(run_child([sys.executable, "-c", _READ_BASE, base, names_json]))
            preads.append(run_child([sys.executable, "-c", _READ_BASE_TORCH, base, names_json]))
            treads.append(run_child([sys.executable, "-c", _TOOLKIT_READ, base, names_json]))
        if i < repeats:
            shutil.rmtree(cache_dir, ignore_errors=True)  # cold: W's SVDs computed
            runs.append(run_child([sys.executable, "-c", _ANALYSE_BASE, adapter, base, lay, str(n_random)],
                                  env=cenv))
            if second is not None:  # another adapter against the same base: the cache is warm
                warm.append(run_child([sys.executable, "-c", _ANALYSE_BASE, second, base, lay, str(n_random)],
                                      env=cenv))
    shutil.rmtree(cache_dir, ignore_errors=True)
    rec = {"layers": layers, "r": r, "modules": len(names), "n_random": n_random,
           "bytes": sum(2 * m * n for m, n in shapes),
           "t_read_in_s": _median([float(x["stdout"].split()[0]) for x in reads]),
           "t_read_proc_s": _median([x["wall_s"] for x in reads]),
           "t_torch_read_in_s": _median([float(x["stdout"].split()[0]) for x in preads]),
           "t_toolkit_read_in_s": _median([float(x["stdout"].split()[0]) for x in treads]),
           "t_analyse_in_s": _median([float(x["stdout"].split()[0]) for x in runs]),
           "t_analyse_proc_s": _median([x["wall_s"] for x in runs]),
           "rss_read_bytes": max(x["maxrss_bytes"] for x in reads),
           "rss_analyse_bytes": max(x["maxrss_bytes"] for x in runs),
           "flops": _flops(shapes, r, n_random=n_random)}
    rec["ratio_time"] = rec["t_analyse_in_s"] / rec["t_read_in_s"]
    rec["gflops_per_s"] = rec["flops"] / rec["t_analyse_in_s"] / 1e9
    rec["ratio_time_proc"] = rec["t_analyse_proc_s"] / rec["t_read_proc_s"]
    from analysis.core.threads import available_cores

    rec["jobs"] = available_cores()
    if warm:
        rec["t_warm_in_s"] = _median([float(x["stdout"].split()[0]) for x in warm])
        rec["ratio_warm"] = rec["t_warm_in_s"] / rec["t_read_in_s"]
        rec["ratio_warm_toolkit_read"] = rec["t_warm_in_s"] / rec["t_toolkit_read_in_s"]
        rec["rss_warm_bytes"] = max(x["maxrss_bytes"] for x in warm)
    log(f"base weights r={r}, {layers} layers ({rec['bytes'] / 2**30:.2f} GiB bf16): analyse "
        f"{rec['t_analyse_in_s']:.1f} s vs pure read {rec['t_read_in_s']:.2f} s (x{rec['ratio_time']:.0f}); "
        f"toolkit read {rec['t_toolkit_read_in_s']:.2f} s; {rec['flops'] / 1e12:.2f} Tflop at "
        f"{rec['gflops_per_s']:.1f} Gflop/s; peak RSS {rec['rss_analyse_bytes'] / 2**20:.0f} MiB"
        + (f"; second adapter, cache warm {rec['t_warm_in_s']:.2f} s (x{rec['ratio_warm']:.1f} of the pure read)"
           if warm else ""))
    return rec
