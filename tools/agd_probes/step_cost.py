"""Probe: what one model evaluation costs on this machine, per step of a batch of b images: the
conditional pass alone (CFG 1), with the shipped AGD adapters, and CFG's batched pair (2b images),
at b = 1, 4 (the benchmark's 4 seeds), 16 and 64.

    PYTHONPATH=. OMP_NUM_THREADS=2 .host/venv/bin/python tools/agd_probes/step_cost.py {vpred32|flow32} OUT.json
"""
import json, os, platform, sys, time

import torch

from tools.training import agd as T

T.pack_with_host()
from guidance_lab.default_model import WEIGHTS_DIR  # noqa: E402
from guidance_lab.guiders.agd import adapter_file  # noqa: E402
from guidance_lab.nodes.bridge.agd import AGDAdapters, adapted_call  # noqa: E402

name, out = sys.argv[1], sys.argv[2]
threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(threads)
model, clip = T.load_model(WEIGHTS_DIR / f"guidance_lab_{name}.safetensors")
f = adapter_file.load(WEIGHTS_DIR / "agd" / f"guidance_lab_{name}_agd.safetensors")
agd = AGDAdapters(f.adapters, f.scale_range, "")


def ms_per_call(fn, n):
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


g = torch.Generator().manual_seed(0)
batches = {}
with torch.no_grad():
    for b in (1, 4, 16, 64):
        x, c = torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 77, 64, generator=g)
        s, w = torch.full((b,), 3.0), torch.full((b,), 5.0)
        x2, s2, c2 = x.repeat(2, 1, 1, 1), s.repeat(2), c.repeat(2, 1, 1)
        n = max(5, 800 // b)
        rounds = []
        for _ in range(3):  # interleaved, so drift of a noisy machine hits all three alike
            rounds.append({"cond_ms": ms_per_call(lambda: model.model.apply_model(x, s, c_crossattn=c), n),
                           "agd_ms": ms_per_call(lambda: adapted_call(model, agd, x, s, c, w), n),
                           "cfg_pair_ms": ms_per_call(lambda: model.model.apply_model(x2, s2, c_crossattn=c2), n)})
        best = {k: min(r[k] for r in rounds) for k in rounds[0]}
        batches[b] = {"rounds": rounds, "best": best, "cond_over_cfg": best["cond_ms"] / best["cfg_pair_ms"],
                      "agd_over_cfg": best["agd_ms"] / best["cfg_pair_ms"],
                      "agd_over_cond": best["agd_ms"] / best["cond_ms"]}
        print(f"batch {b}: cond/cfg {batches[b]['cond_over_cfg']:.2f}, agd/cfg {batches[b]['agd_over_cfg']:.2f}",
              flush=True)
result = {"model": name, "threads": threads, "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
          "batches": batches}
json.dump(result, open(out, "w"), indent=1)
