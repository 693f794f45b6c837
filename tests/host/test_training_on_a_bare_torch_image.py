"""The default-model trainer runs where only torch's stack is installed (a lent GPU machine's
image): no PyAV, whose import ``comfy_api`` makes for its video types, and no torchsde. The
trainer reaches ComfyUI's networks through ``nodes.bridge`` and must not load the node list."""

import os
import subprocess

import pytest
import torch

from tools.paths import HOST_PYTHON, REPO

pytestmark = pytest.mark.host

# Packages ComfyUI's requirements install that a torch-only image lacks. A None entry in
# sys.modules makes ``import`` fail and ``importlib.util.find_spec`` answer None, as absence does.
ABSENT = ("av", "torchsde", "trampoline")


def test_the_dit_trainer_trains_and_exports_without_pyav_or_torchsde(tmp_path):
    """Also with the batches drawn by worker processes (``--loader-workers``, what a GPU run
    uses): the same batches in the same order, so the same weights."""
    from safetensors.torch import load_file

    from guidance_lab.default_model import WEIGHTS_DIR
    from guidance_lab.tests.fixtures.dit_default_model import TINY_DIT_ARGS

    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in ABSENT))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1",
           "GUIDANCE_LAB_CACHE": str(tmp_path / "cache")}
    exported = {}
    for run, workers in (("inline", "0"), ("workers", "2")):
        train = [str(HOST_PYTHON), "-m", "tools.training.train", "--run-name", run, *TINY_DIT_ARGS,
                 "--batch-size", "2", "--teacher", str(WEIGHTS_DIR / "guidance_lab_flow32.safetensors")]
        exported[run] = tmp_path / f"{run}.safetensors"
        for argv in ([*train, "--steps", "3", "--threads", "1", "--loader-workers", workers],
                     [*train, "--export", str(exported[run])]):
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
            assert done.returncode == 0, done.stderr[-3000:]
    inline, drawn_ahead = load_file(exported["inline"]), load_file(exported["workers"])
    assert inline.keys() == drawn_ahead.keys()
    assert all(torch.equal(inline[k], drawn_ahead[k]) for k in inline)
    probe = subprocess.run([str(HOST_PYTHON), "-c", "import av"], cwd=REPO, capture_output=True, text=True,
                           env=env)
    assert "ModuleNotFoundError" in probe.stderr  # the stand-in for the bare image was in force

