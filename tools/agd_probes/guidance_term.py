"""Probe: is the stored CFG target the teacher's (recomputed on the stored states), and how much of
the guidance term g = D_c - D_u is a function of the prompt alone (its mean over one prompt's
trajectories) rather than of the state?

    PYTHONPATH=. .host/venv/bin/python tools/agd_probes/guidance_term.py vpred32 DATA OUT.json

DATA: `python -m tools.training.agd generate --data DATA --model default_model/weights/guidance_lab_<model>.safetensors
--prompts 4 --per-prompt 4 --steps 20 --scale-range 1 8` (4 prompts x 4 trajectories)."""
import json, sys, torch, numpy as np
from tools.training import agd as T
T.pack_with_host()
from guidance_lab.default_model import WEIGHTS_DIR
from guidance_lab.guiders.agd.trajectories import TrajectoryStore
from guidance_lab.nodes.bridge.agd_training import encode_prompts
from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint
torch.set_num_threads(2)
name, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
model, clip = T.load_model(WEIGHTS_DIR / f"guidance_lab_{name}.safetensors")
print("fingerprint", base_model_fingerprint(model)[:12])
store = TrajectoryStore.open(data)
print(store.meta["trajectories"], store.meta["per_prompt"], store.meta["model_fingerprint"][:12])
x, s, c, w, tgt = store.batch(np.arange(len(store)), "cpu")
empty = encode_prompts(clip, [""]).expand(len(x), -1, -1)
with torch.no_grad():
    def chunks(context):
        return torch.cat([model.model.apply_model(x[i:i + 160], s[i:i + 160], c_crossattn=context[i:i + 160])
                          for i in range(0, len(x), 160)])
    dc, du = chunks(c), chunks(empty)
wb = w.reshape(-1, 1, 1, 1)
re = du + wb * (dc - du)
steps = store.meta["steps"]; T_ = store.meta["trajectories"]; pp = store.meta["per_prompt"]
def per_step(a):
    return (a ** 2).reshape(T_, steps, -1).mean(-1).mean(0).sqrt().numpy()
print("recompute err", per_step(re - tgt).round(4))
print("|tgt - dc|   ", per_step(tgt - dc).round(3))
g = (dc - du)  # guidance direction per unit (w-1)
gs = g.reshape(T_ // pp, pp, steps, -1)
mean = gs.mean(1, keepdim=True)
resid = ((gs - mean) ** 2).mean((0, 1, 3)).mul(pp / (pp - 1)).sqrt()  # unbiased: the mean includes the sample
tot = (gs ** 2).mean((0, 1, 3)).sqrt()
print("|g| per step ", tot.numpy().round(3))
print("x-dep share  ", (resid / tot).numpy().round(2), "(rms of g minus its per-prompt mean, over rms g; pp=%d)" % pp)
# how well does g correlate with (dc - x-independent)? linear predictor of g from dc per step
dcs = dc.reshape(T_ // pp, pp, steps, -1); dm = dcs.mean(1, keepdim=True)
dc_share = ((dcs - dm) ** 2).mean((0, 1, 3)).sqrt() / (dcs ** 2).mean((0, 1, 3)).sqrt()
print("dc x-dep share (biased)", dc_share.numpy().round(2))
json.dump({"model": name, "data": data, "recompute_rmse": per_step(re - tgt).round(5).tolist(),
           "cfg_minus_cond_rmse": per_step(tgt - dc).round(4).tolist(),
           "guidance_term_rmse": tot.numpy().round(4).tolist(),
           "state_dependent_share": (resid / tot).numpy().round(3).tolist()}, open(out, "w"), indent=1)
