"""Issue 11 in-process: the model fingerprint, the file policy's writes, the record plot's caps."""

import errno
import json
import os
import time

import pytest
import torch

from guidance_lab.nodes.bridge import files, fingerprint
from guidance_lab.nodes.bridge.compat import copy_network
from guidance_lab.nodes.bridge.fingerprint import model_fingerprint
from guidance_lab.nodes.linear_ag import LinearAGCalibrateNode
from guidance_lab.nodes.record_plot import RecordPlotNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import empty_latent, node_out

pytestmark = pytest.mark.host
CALIBRATE = r"LinearAG Calibrate \(Guidance Lab\): input 'filename'"


def calibrate(model, pos, neg, name, overwrite=False, runs=1, ridge=1e-4):
    from comfy_extras import nodes_custom_sampler as cs

    sigmas = node_out(cs.BasicScheduler.execute(model, "normal", 2, 1.0))[0]
    sampler = node_out(cs.KSamplerSelect.execute("euler"))[0]
    return LinearAGCalibrateNode.execute(model, pos, neg, sampler, sigmas, empty_latent(1), 5.0, runs, 1,
                                         ridge, name, overwrite).args[0]


def copy_with(model, change):
    """A clone of the fixture model around a deep copy of its network, changed in place by ``change``."""
    other = model.clone()
    other.model = copy_network(model.model)
    with torch.no_grad():
        change(dict(other.model.diffusion_model.named_parameters()))
    return other


# ---------------------------------------------------------------- item 6: the fingerprint


def test_item6_fingerprint_changes_with_any_single_weight(fixture_model):
    """The old fingerprint sampled 1 tensor in len/64 and its first 4096 values: a model that
    differed elsewhere matched. Now one changed value anywhere changes it."""
    model, _, _ = fixture_model
    names = sorted(model.model.diffusion_model.state_dict())
    sampled_before = set(names[:: max(1, len(names) // 64)])
    name = next(n for n in names[1:] if n not in sampled_before and model.model.diffusion_model
                .state_dict()[n].numel() > 4096)

    def nudge(params):
        params[name].view(-1)[-1] += 1e-3  # the last value, past the old 4096-value window

    assert model_fingerprint(copy_with(model, nudge)) != model_fingerprint(model)
    assert model_fingerprint(copy_with(model, lambda p: None)) == model_fingerprint(model)


def test_fingerprint_ignores_the_hosts_renaming_of_flux_norm_scales():
    """ComfyUI 0.33 calls the Flux RMSNorm weight ``weight`` where 0.3.75 called it ``scale``:
    the same file must fingerprint alike on both, so an AGD adapter made on one loads on the
    other (the shipped DiT adapters load on both hosts: test_agd.py)."""
    canonical = fingerprint._canonical
    assert canonical("diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale") == \
        canonical("diffusion_model.double_blocks.0.img_attn.norm.key_norm.weight")
    assert canonical("diffusion_model.input_blocks.0.0.weight") == "diffusion_model.input_blocks.0.0.weight"
    assert canonical("diffusion_model.x.scale_shift.bias") == "diffusion_model.x.scale_shift.bias"


def test_fingerprint_is_cached_and_covers_weight_patches(fixture_model, monkeypatch):
    model, _, _ = fixture_model
    base = model_fingerprint(model)
    hashed = []
    monkeypatch.setattr(fingerprint, "_base_digest", lambda mp: hashed.append(mp) or "x")
    t0 = time.perf_counter()
    assert model_fingerprint(model) == base and model_fingerprint(model.clone()) == base
    assert hashed == [] and time.perf_counter() - t0 < 0.05  # a look-up, no hashing
    monkeypatch.undo()

    key = next(k for k in model.get_key_patches("diffusion_model.") if k.endswith("weight"))
    weight = model.get_key_patches("diffusion_model.")[key][0][0]

    def patched(scale):
        clone = model.clone()
        clone.add_patches({key: (torch.full_like(weight, scale),)}, 1.0)  # a LoRA-like "diff" patch
        return clone

    assert model_fingerprint(patched(0.01)) != base
    assert model_fingerprint(patched(0.01)) == model_fingerprint(patched(0.01))  # content, not uuid
    assert model_fingerprint(patched(0.01)) != model_fingerprint(patched(0.02))


def test_fingerprint_reads_the_unpatched_weights_while_a_patched_clone_is_loaded(fixture_model):
    import comfy.model_management

    model, _, _ = fixture_model
    base = model_fingerprint(model)
    key = next(k for k in model.get_key_patches("diffusion_model.") if k.endswith("weight"))
    clone = model.clone()
    clone.add_patches({key: (torch.ones_like(model.get_key_patches()[key][0][0]),)}, 1.0)
    comfy.model_management.load_models_gpu([clone])  # applies the patch in place
    try:
        fingerprint._base_cache.clear()
        assert model_fingerprint(model) == base
    finally:
        comfy.model_management.unload_all_models()


# ---------------------------------------------------------------- the file policy's writes


def test_saved_files_are_ordinary_atomic_and_numbered_unless_overwrite(fixture_model, output_dir):
    model, pos, neg = fixture_model
    first = calibrate(model, pos, neg, "linear_ag/c")
    assert first == "linear_ag/c.safetensors"
    assert (output_dir / first).stat().st_mode & 0o777 == 0o644
    second = calibrate(model, pos, neg, "linear_ag/c")
    third = calibrate(model, pos, neg, "linear_ag/c.safetensors")
    assert (second, third) == ("linear_ag/c_00001.safetensors", "linear_ag/c_00002.safetensors")
    before = (output_dir / first).read_bytes()
    assert calibrate(model, pos, neg, "linear_ag/c", overwrite=True, ridge=0.5) == first
    assert (output_dir / first).read_bytes() != before
    assert sorted(p.name for p in (output_dir / "linear_ag").iterdir()) == [
        "c.safetensors", "c_00001.safetensors", "c_00002.safetensors"]  # no temporary files left


def test_item7_a_folder_that_takes_no_file_fails_before_the_runs(fixture_model, output_dir, monkeypatch):
    """A read-only or full disk was reported only after every calibration run was spent."""
    model, pos, neg = fixture_model
    runs = []
    monkeypatch.setattr("guidance_lab.nodes.linear_ag.calibrate_linear_ag", lambda *a: runs.append(a))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.tempfile, "TemporaryFile", full)
    with pytest.raises(NodeInputError, match=CALIBRATE + r" cannot be saved in .*No space left"):
        calibrate(model, pos, neg, "linear_ag/full")
    assert runs == []  # no calibration run was spent


def test_item7_a_failed_final_write_names_the_input_and_keeps_the_old_file(fixture_model, output_dir, monkeypatch):
    from guidance_lab.guiders import linear_ag_file

    model, pos, neg = fixture_model
    name = calibrate(model, pos, neg, "linear_ag/keep")
    before = (output_dir / name).read_bytes()

    def disk_full(path, cal):
        open(path, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(linear_ag_file, "save", disk_full)
    with pytest.raises(NodeInputError, match=CALIBRATE + r" could not be saved as .*No space left.*free disk space"):
        calibrate(model, pos, neg, "linear_ag/keep", overwrite=True)
    assert (output_dir / name).read_bytes() == before
    assert [p.name for p in (output_dir / "linear_ag").iterdir()] == ["keep.safetensors"]


def test_item1_a_file_of_another_kind_is_never_replaced(fixture_model, output_dir):
    from safetensors.torch import save_file

    model, pos, neg = fixture_model
    (output_dir / "linear_ag").mkdir()
    other = output_dir / "linear_ag" / "model.safetensors"
    save_file({"w": torch.ones(3)}, str(other), metadata={"format": "pt"})
    before = other.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(NodeInputError, match=CALIBRATE + r" names .* which is a file of format 'pt', "
                                                             r"not a LinearAG calibration; the pack never replaces it"):
            calibrate(model, pos, neg, "linear_ag/model", overwrite=overwrite)
    assert other.read_bytes() == before


# ---------------------------------------------------------------- item 5: the plot's caps


def test_item5_record_plot_is_capped_whatever_the_record_holds():
    from guidance_lab.nodes.bridge.record_plot import MAX_PANELS, PANEL_HEIGHT

    steps = [{"step": i, "nfe": 2, "metrics": {f"m{k}": [0.1 * i] * 64 for k in range(400)}} for i in range(50)]
    record = json.dumps({"policy": "cfg", "settings": {}, "batch_size": 64, "steps": steps})
    t0 = time.perf_counter()
    image = RecordPlotNode.execute(record).args[0]
    assert image.shape[1] == PANEL_HEIGHT * (MAX_PANELS + 1) + 30
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("record, problem", [
    ('{"steps": [{"step": 0}]}', r"steps\[0\].nfe is None, not a number"),
    ('{"steps": [{"nfe": 2, "metrics": [1]}]}', r"steps\[0\].metrics is not an object"),
    ('{"steps": [{"nfe": 2, "metrics": {"c": ["x"]}}]}', r"steps\[0\].metrics\['c'\] is 'x'"),
    ('{"steps": [{"nfe": NaN}]}', r"steps\[0\].nfe is nan, not a finite number"),
    ('{"steps": [], "decisions": {"switch_step": "3"}}', "decisions.switch_step is not a list"),
    ('{"steps": 3}', "it is not a Guidance Lab run record"),
    ("[" * 100000, "it is not JSON"),
])
def test_item7_malformed_records_name_the_node_and_input(record, problem):
    with pytest.raises(NodeInputError, match=r"Guidance Record Plot \(Guidance Lab\): input 'record' cannot be plotted: " + problem):
        RecordPlotNode.execute(record)


def test_a_numeric_input_is_checked_before_any_work(fixture_model, output_dir):
    model, pos, neg = fixture_model
    for ridge, shown in ((float("nan"), "nan"), (float("inf"), "inf")):
        with pytest.raises(NodeInputError, match=rf"LinearAG Calibrate \(Guidance Lab\): input 'ridge' is {shown}; "
                                                 r"give a finite number in \[0.0, 10.0\]"):
            calibrate(model, pos, neg, "linear_ag/nan", ridge=ridge)
    assert not (output_dir / "linear_ag").exists()


def test_model_files_are_found_by_comfyui_rules_and_bad_names_refused(tmp_path, host, monkeypatch):
    import folder_paths

    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "smooth.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path / "loras")], {".safetensors"}))
    found = files.find_model_file("Loader", "lora_name", "loras", "smooth.safetensors")
    assert found == tmp_path / "loras" / "smooth.safetensors"
    for name, problem in (("../secret.safetensors", "is not in ComfyUI's loras folder"),
                          ("a\x00b", "control character"), ("", "is empty"), ("/etc/passwd", "absolute path")):
        with pytest.raises(NodeInputError, match=rf"Loader: input 'lora_name' .*{problem}"):
            files.find_model_file("Loader", "lora_name", "loras", name)
