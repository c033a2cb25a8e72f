"""Collections at scale: all-pairs similarity / cosine on Dask, one worker against two, and merges against PEFT.

* N = 256 synthetic adapters of SmolLM2-135M's shape (q 576 × 576, v 192 × 576, 30 layers, r = 8) and
  N = 32 of Llama-2-7B's attention (q, k, v, o 4096 × 4096, 32 layers, r = 8), bf16 PEFT folders;
* :func:`analysis.sweeps.collection.collection_similarity` on a ``distributed.LocalCluster`` with one and with
  two single-threaded worker processes (loopback TCP): wall time, time per pair, each worker's peak RSS, the
  task durations by kind (from the scheduler's task stream) and the speed-up;
* the cost model for N adapters on W workers, from the measured per-task costs;
* merges of the shipped task adapters: :func:`analysis.sweeps.merge.merge_adapters` against PEFT's
  ``add_weighted_adapter`` (svd and cat) on a randomly initialised model of SmolLM2's configuration.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from benchmarks import synth

__all__ = ["COLLECTION_SHAPES", "write_collection", "run_collection", "merge_vs_peft", "cost_formula"]

#: name -> (layers, {module: (d_out, d_in)})
COLLECTION_SHAPES = {
    "smollm2": (30, {"self_attn.q_proj": (576, 576), "self_attn.v_proj": (192, 576)}),
    "7b_attn": (32, {f"self_attn.{p}": (4096, 4096) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}),
    "tiny": (2, {"self_attn.q_proj": (64, 64), "self_attn.v_proj": (32, 64)}),
}


def write_collection(workdir, shape, n, r, *, seed=0):
    """``n`` seeded bf16 PEFT adapters of ``shape`` (reused when already written); returns their folders."""
    import json

    layers, mods = COLLECTION_SHAPES[shape]
    out = []
    for i in range(n):
        folder = os.path.join(workdir, f"coll_{shape}_r{r}", f"a{i:05d}")
        out.append(folder)
        spec = os.path.join(folder, "adapter_config.json")
        if os.path.exists(spec) and os.path.exists(os.path.join(folder, "adapter_model.safetensors")):
            continue
        os.makedirs(folder, exist_ok=True)
        specs = []
        for layer in range(layers):
            for m, (d_out, d_in) in mods.items():
                name = f"base_model.model.model.layers.{layer}.{m}"
                specs += [(f"{name}.lora_A.weight", (r, d_in)), (f"{name}.lora_B.weight", (d_out, r))]

        def fill(j, key, shp, i=i):
            rng = np.random.default_rng([seed, i, j])
            return rng.standard_normal(shp, dtype=np.float32) * np.float32(
                1 / math.sqrt(shp[1]) if key.endswith("lora_A.weight") else 0.02)

        synth.write_safetensors(os.path.join(folder, "adapter_model.safetensors"), specs, fill,
                                metadata={"format": "pt"})
        with open(spec, "w") as fh:
            json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
                       "target_modules": sorted({m.rsplit(".", 1)[-1] for m in mods}), "lora_dropout": 0.0,
                       "bias": "none", "fan_in_fan_out": False, "use_rslora": False}, fh)
    return out


def _vmhwm():
    with open("/proc/self/status") as fh:
        return int(next(ln.split()[1] for ln in fh if ln.startswith("VmHWM:"))) * 1024


def _cpu():
    return time.process_time()


def _warm():
    import importlib

    importlib.import_module("analysis.sweeps.collection")  # numpy, dask, the readers: not timed
    return os.getpid()


def _kind(key):
    for k in ("summarise_adapter", "_stack", "_block"):
        if k in str(key):
            return k.lstrip("_")
    return "other"


def _wait_quiet(limit=1.5, timeout=60.0):
    """Wait (at most ``timeout`` s) until the 1-min load average is below ``limit``: other jobs share the cores."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= limit and time.perf_counter() - t0 < timeout:
        time.sleep(2.0)


def _on_cluster(paths, workers, *, k, log, repeats=1, quiet=None):
    from distributed import Client, LocalCluster, get_task_stream

    from analysis.sweeps.collection import collection_similarity

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None, memory_limit=0) as cluster, \
            Client(cluster) as client:
        client.run(_warm)
        base_rss = client.run(_vmhwm)
        best = None
        for _ in range(repeats):  # the fastest repeat: the least disturbed by other jobs on the machine
            if quiet:
                _wait_quiet(*quiet)
            c0 = client.run(_cpu)
            with get_task_stream(client) as ts:
                t0 = time.perf_counter()
                res = collection_similarity(paths, k=k, client=client)
                wall = time.perf_counter() - t0
            c1 = client.run(_cpu)
            share = sum(c1[w] - c0[w] for w in c1) / (workers * wall)  # 1: each worker had a core throughout
            if best is None or wall < best[0]:
                best = (wall, list(ts.data), os.getloadavg()[0], share)
        wall, data, load, share = best
        rss = client.run(_vmhwm)
    busy = {}
    count = {}
    for t in data:
        kind = _kind(t["key"])
        dur = sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
        busy[kind] = busy.get(kind, 0.0) + dur
        count[kind] = count.get(kind, 0) + 1
    log(f"  {workers} worker(s): {wall:.2f} s (best of {repeats}, load {load:.1f}, CPU share {share:.2f}); busy " + ", ".join(f"{k} {v:.2f} s ({count[k]})"
                                                              for k, v in sorted(busy.items())))
    return res, {"workers": workers, "wall_s": wall, "busy_s": busy, "tasks": count, "repeats": repeats,
                 "loadavg": load, "cpu_share": share,
                 "peak_rss_bytes": sorted(rss.values()), "idle_rss_bytes": sorted(base_rss.values())}


def cost_formula(c):
    """Text of the cost model T(N, W) with the measured constants (seconds)."""
    return (f"T(N, W) ≈ [N · {c['per_adapter_s'] * 1e3:.2f} ms + N · M · {c['per_module_read_s'] * 1e3:.3f} ms "
            f"+ N(N+1)/2 · M · {c['per_module_pair_s'] * 1e6:.2f} µs] / W")


def run_collection(workdir, *, shapes=(("smollm2", 256), ("7b_attn", 32)), r=8, k=1, workers=(1, 2), repeats=2,
                   quiet=(1.5, 60.0), log=print):
    """Time the all-pairs collection on one and two workers for each (shape, N) (the fastest of ``repeats``)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the worker processes
    out = []
    for shape, n in shapes:
        layers, mods = COLLECTION_SHAPES[shape]
        M = layers * len(mods)
        t0 = time.perf_counter()
        paths = write_collection(workdir, shape, n, r)
        log(f"collection {shape}: N = {n}, {M} modules, r = {r} (written in {time.perf_counter() - t0:.1f} s)")
        runs, ref = [], None
        for w in workers:
            res, rec = _on_cluster(paths, w, k=k, log=log, repeats=repeats, quiet=quiet)
            if ref is None:
                ref = res
            else:  # the same numbers whatever the number of workers
                assert np.allclose(res.cosine, ref.cosine, atol=1e-12, equal_nan=True)
            runs.append(rec)
        one = runs[0]
        pairs = n * (n + 1) // 2
        cost = {"per_adapter_s": one["busy_s"].get("summarise_adapter", 0.0) / n,
                "per_module_read_s": one["busy_s"].get("stack", 0.0) / (n * M),
                "per_module_pair_s": one["busy_s"].get("block", 0.0) / (pairs * M)}
        total = sum(one["busy_s"].values())
        n_big = 10_000
        t_big = (n_big * cost["per_adapter_s"] + n_big * M * cost["per_module_read_s"]
                 + n_big * (n_big + 1) / 2 * M * cost["per_module_pair_s"])
        rec = {"shape": shape, "n": n, "modules": M, "r": r, "k": k, "pairs": n * (n - 1) // 2, "runs": runs,
               "per_pair_s": runs[-1]["wall_s"] / (n * (n - 1) / 2),
               "speedup": runs[0]["wall_s"] / runs[-1]["wall_s"] if len(runs) > 1 else None,
               "busy_total_s": total, "cost": cost, "formula": cost_formula(cost),
               "n10k_cpu_hours": t_big / 3600,
               "sim_median": float(np.nanmedian(ref.similarity[np.triu_indices(n, 1)]))}
        log(f"  speed-up 1 -> {workers[-1]} workers: {rec['speedup'] or float('nan'):.2f}x; {rec['formula']}; "
            f"N = 10,000: {rec['n10k_cpu_hours']:.1f} core-hours")
        out.append(rec)
    return out


def _random_model(config_kw):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**config_kw))


SMOLLM2_CONFIG = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True)


def merge_vs_peft(paths, *, methods=("svd", "cat"), repeats=3, config_kw=None, log=print):
    """Our merge (from the factors) against PEFT's add_weighted_adapter, on the same adapters, timed in-process."""
    import torch
    from peft import PeftModel

    from analysis.io import load_adapter
    from analysis.sweeps.merge import merge_adapters

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    names = [f"a{i}" for i in range(len(paths))]
    model = PeftModel.from_pretrained(_random_model(config_kw or SMOLLM2_CONFIG), paths[0], adapter_name=names[0])
    for n, p in zip(names[1:], paths[1:]):
        model.load_adapter(p, adapter_name=n)
    ads = [load_adapter(p) for p in paths]
    out = []
    for method in methods:
        t_ours, t_peft = [], []
        for rep in range(repeats):
            for a in ads:
                a.clear_cache()
            t0 = time.perf_counter()
            res = merge_adapters(ads, method=method)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.add_weighted_adapter(names, [1.0] * len(names), f"m_{method}_{rep}", combination_type=method)
            t_peft.append(time.perf_counter() - t0)
        # agreement of the two merged updates, worst module
        worst = 0.0
        for mname, mod in model.named_modules():
            key = f"m_{method}_0"
            if hasattr(mod, "get_delta_weight") and key in getattr(mod, "lora_A", {}):
                theirs = mod.get_delta_weight(key).detach().double().numpy()
                lr = res.modules[mname.replace("base_model.model.", "")]
                ours = lr.scale * lr.lora_B.astype(np.float64) @ lr.lora_A.astype(np.float64)
                worst = max(worst, float(np.abs(ours - theirs).max() / np.abs(theirs).max()))
        rec = {"method": method, "adapters": len(paths), "modules": len(res.modules),
               "t_ours_s": float(np.median(t_ours)), "t_peft_s": float(np.median(t_peft)),
               "speedup": float(np.median(t_peft) / np.median(t_ours)), "max_rel_diff": worst,
               "summary": res.summary()}
        log(f"  merge {method}: ours {rec['t_ours_s']:.2f} s, PEFT add_weighted_adapter {rec['t_peft_s']:.2f} s "
            f"({rec['speedup']:.1f}x); max |ours - PEFT| / max |PEFT| = {worst:.1e}")
        out.append(rec)
    return out


def render(res):
    """Markdown lines for the README block."""
    lines = []
    coll = res.get("collection") or []
    if coll:
        lines += ["**Collections** (`collection_similarity`, k = 1, side input): synthetic seeded bf16 PEFT adapters, "
                  "all pairs, on a `distributed.LocalCluster` of single-threaded worker processes on loopback (the "
                  "adapters read from the shared local disk); times are the fastest of the repeats; busy = summed task "
                  "compute time from the scheduler's task stream (one worker); peak RSS = each worker's `VmHWM`; "
                  "load = the machine's 1-min load average after the timed repeat; CPU share = the workers' CPU time / "
                  "(workers × wall time): 1 when each worker had its core throughout, lower when other jobs on "
                  "the 2 shared cores took it (then the speed-up measures the machine, not the code).", "",
                  "| adapters | N | modules | pairs | 1 worker (load, CPU share) | 2 workers (load, CPU share) | speed-up | time per pair "
                  "(2 w.) | busy: read+summarise / stack / blocks | peak RSS per worker (2 w.) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in coll:
            one, two = c["runs"][0], c["runs"][-1]
            b = one["busy_s"]
            lines.append(f"| {c['shape']} r = {c['r']} | {c['n']} | {c['modules']} | {c['pairs']:,} | "
                         f"{one['wall_s']:.1f} s ({one['loadavg']:.1f}, {one['cpu_share']:.2f}) | "
                         f"{two['wall_s']:.1f} s ({two['loadavg']:.1f}, {two['cpu_share']:.2f}) | "
                         f"{c['speedup']:.2f}× | "
                         f"{c['per_pair_s'] * 1e3:.2f} ms | {b.get('summarise_adapter', 0):.1f} / "
                         f"{b.get('stack', 0):.1f} / {b.get('block', 0):.1f} s | "
                         f"{max(two['peak_rss_bytes']) / 2**20:.0f} MiB |")
        lines += ["", "Cost model (M modules, W workers, constants measured on one worker here):", ""]
        for c in coll:
            lines.append(f"- {c['shape']}: {c['formula']}; N = 10,000: {c['n10k_cpu_hours']:.1f} core-hours "
                         f"(≈ {c['n10k_cpu_hours'] * 60 / 64:.0f} min on 64 workers at perfect scaling).")
        lines.append("")
    mg = res.get("merge") or []
    if mg:
        lines += ["**Merges** of the four shipped task adapters (define, word, hypernym, synonyms; r = 8, seed 0) "
                  "into one: `merge_adapters` from the factors against PEFT's `add_weighted_adapter` on a "
                  "randomly initialised model of SmolLM2-135M's configuration (median of the repeats, in-process, "
                  "loading excluded).", "",
                  "| method | modules | ours | PEFT | speed-up | max \\|ours − PEFT\\| / max \\|PEFT\\| |",
                  "|---|---|---|---|---|---|"]
        for m in mg:
            lines.append(f"| {m['method']} | {m['modules']} | {m['t_ours_s'] * 1e3:.0f} ms | {m['t_peft_s'] * 1e3:.0f} ms"
                         f" | {m['speedup']:.1f}× | {m['max_rel_diff']:.0e} |")
        lines.append("")
    return lines
