"""Probe: one pass, but every attn2 extrapolated as attn2(c) + gain (w-1) (attn2(c) - attn2(empty)).
Teacher-forced per-step RMSE to the stored CFG output, against the plain conditional pass.

    PYTHONPATH=. .host/venv/bin/python tools/agd_probes/feature_cfg.py vpred32 DATA 0.25,0.5,1 OUT.json
(DATA as for guidance_term.py)."""
import json, sys, torch, numpy as np
from tools.training import agd as T
T.pack_with_host()
from guidance_lab.default_model import WEIGHTS_DIR
from guidance_lab.guiders.agd.trajectories import TrajectoryStore
from guidance_lab.nodes.bridge.agd_training import encode_prompts
torch.set_num_threads(2)
name, data = sys.argv[1], sys.argv[2]
gains = [float(g) for g in sys.argv[3].split(",")]
result = {"model": name, "data": sys.argv[2], "gains": {}}
model, clip = T.load_model(WEIGHTS_DIR / f"guidance_lab_{name}.safetensors")
dm = model.model.diffusion_model
mods = {}
for mname, m in dm.named_modules():
    if getattr(m, "attn2", None) is not None:
        mods[mname] = m.attn2
print(list(mods))
store = TrajectoryStore.open(data)
x, s, c, w, tgt = store.batch(np.arange(len(store)), "cpu")
empty = encode_prompts(clip, [""])
steps = store.meta["steps"]; T_ = store.meta["trajectories"]
state = {}
def inp(n, context, value, eo):
    state["n"], state["ctx"] = n, context
    return n, context, value
attn_by_block = {}
for mname, a in mods.items():
    attn_by_block[mname] = a
def find(eo):
    b = eo["block"]; bi = eo.get("block_index", 0)
    prefix = {"input": "input_blocks", "middle": "middle_block", "output": "output_blocks"}[b[0]]
    for mname, a in mods.items():
        parts = mname.split(".")
        sub = int(parts[parts.index("transformer_blocks") + 1])
        if parts[0] == prefix and (b[0] == "middle" or int(parts[1]) == b[1]) and sub == bi:
            return a
    raise KeyError(b)
def run(gain, xb, sb, cb, wb, per_block=None):
    def out(nout, eo):
        if gain == 0:
            return nout
        a = find(eo)
        e = empty.expand(state["n"].shape[0], -1, -1).to(state["n"])
        nu = a(state["n"], context=e)
        return nout + gain * (wb.reshape(-1, 1, 1) - 1) * (nout - nu)
    opts = {"patches": {"attn2_patch": [inp], "attn2_output_patch": [out]}, "sigmas": sb}
    return model.model.apply_model(xb, sb, c_crossattn=cb, transformer_options=opts)
def per_step(a):
    return (a ** 2).reshape(T_, steps, -1).mean(-1).mean(0).sqrt().numpy()
with torch.no_grad():
    base = None
    for g in [0.0] + gains:
        outs = torch.cat([run(g, x[i:i+160], s[i:i+160], c[i:i+160], w[i:i+160]) for i in range(0, len(x), 160)])
        e = per_step(outs - tgt)
        if base is None:
            base = e; print("cond only", e.round(3)); continue
        overall = round(float(np.sqrt((base**2).mean() / (e**2).mean())), 2)
        print(f"gain {g}: cut", (base / e).round(2), "overall", overall)
        result["gains"][str(g)] = {"cut_per_step": (base / e).round(3).tolist(), "cut_overall": overall}
json.dump(result, open(sys.argv[4], "w"), indent=1)
