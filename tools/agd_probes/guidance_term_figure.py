"""Figure: D_c, D_u, the CFG output and g = D_c - D_u (normalised) at steps 0, 1, 2, 4, 7, 12 of
8 stored CFG trajectories (rows: 4 prompts x 2).

    PYTHONPATH=. .host/venv/bin/python tools/agd_probes/guidance_term_figure.py vpred32 DATA OUT.png
(DATA as for guidance_term.py)."""
import sys, torch, numpy as np
from PIL import Image
from tools.training import agd as T
T.pack_with_host()
from guidance_lab.default_model import WEIGHTS_DIR
from guidance_lab.guiders.agd.trajectories import TrajectoryStore
from guidance_lab.nodes.bridge.agd_training import encode_prompts
name, data = sys.argv[1], sys.argv[2]
model, clip = T.load_model(WEIGHTS_DIR / f"guidance_lab_{name}.safetensors")
store = TrajectoryStore.open(data)
steps = store.meta["steps"]
rows = np.array([store.row(t, k) for t in range(0, 16, 2) for k in (0, 1, 2, 4, 7, 12)])
x, s, c, w, tgt = store.batch(rows, "cpu")
empty = encode_prompts(clip, [""]).expand(len(x), -1, -1)
with torch.no_grad():
    dc = model.model.apply_model(x, s, c_crossattn=c)
    du = model.model.apply_model(x, s, c_crossattn=empty)
g = (dc - du)
def img(t, scale=1.0):
    return ((t * scale).clamp(-1, 1) * 0.5 + 0.5).permute(1, 2, 0).numpy()
tiles = []
for i in range(len(x)):
    gn = g[i] / (g[i].abs().max() + 1e-8)
    tiles.append(np.concatenate([img(dc[i]), img(du[i]), img(tgt[i]), img(gn)], 1))
rowsimg = [np.concatenate(tiles[j*6:(j+1)*6], 1) for j in range(8)]
a = (np.concatenate(rowsimg, 0) * 255).astype(np.uint8)
Image.fromarray(a).resize((a.shape[1]*2, a.shape[0]*2), Image.NEAREST).save(sys.argv[3])
print([store.meta["prompts"][i] for i in store.prompt_index[rows[::6]]], w[::6])
