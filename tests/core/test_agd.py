"""AGD's adapters, adapter set, file and policy (pure torch)."""

import json

import pytest
import torch

from guidance_lab.guiders import StepContext
from guidance_lab.guiders.agd import (AdapterConfig, AdapterSet, AGDPolicy, BlockAttentionAdapter,
                                      CrossAttentionAdapter, OffsetAdapter, block_name,
                                      check_scale, fourier_features, relative_size)
from guidance_lab.guiders.agd import adapter_file

SMALL = AdapterConfig(width=16, fourier_features=8, mlp_hidden=32, time_features=8, seed=3)
LAYOUT = {block_name("input", 4, 0): (64, 32), block_name("middle", 0, 0): (64, 32), "output_3_0": (48, 32)}


def inputs(n=2, tokens=5, dim=64, ctx=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, tokens, dim, generator=g), torch.tensor([2.0, 7.5])[:n],
            torch.tensor([999.0, 10.0])[:n], torch.randn(n, 7, ctx, generator=g))


def perturb(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_an_untrained_adapter_adds_exactly_zero():
    adapter = CrossAttentionAdapter(64, 32, SMALL, torch.Generator().manual_seed(0))
    out = adapter(*inputs())
    assert out.shape == (2, 5, 64)
    assert torch.equal(out, torch.zeros_like(out))


def test_fourier_features_are_cos_of_fixed_random_frequencies_and_phases():
    adapters = AdapterSet(LAYOUT, SMALL)
    enc = adapters.adapters["input_4_0"].scale_token
    w = torch.tensor([1.0, 3.5])
    expected = torch.cos(2 * torch.pi * (w[:, None] * enc.freq + enc.phase))
    torch.testing.assert_close(fourier_features(w, enc.freq, enc.phase), expected)
    assert ((enc.phase >= 0) & (enc.phase <= 1)).all()
    # buffers are saved with the adapter and never trained
    assert "input_4_0.scale_token.freq" in adapters.flat_state_dict()
    assert all(not name.endswith(("freq", "phase")) for name, _ in adapters.named_parameters())


def test_the_seed_alone_fixes_the_initial_adapters():
    a, b = AdapterSet(LAYOUT, SMALL), AdapterSet(LAYOUT, SMALL)
    c = AdapterSet(LAYOUT, AdapterConfig(**{**SMALL.to_dict(), "seed": 4}))
    for key, value in a.flat_state_dict().items():
        assert torch.equal(value, b.flat_state_dict()[key])
    assert not torch.equal(a.flat_state_dict()["middle_0_0.scale_token.freq"],
                           c.flat_state_dict()["middle_0_0.scale_token.freq"])


def test_a_trained_adapter_depends_on_scale_timestep_and_prompt():
    adapter = CrossAttentionAdapter(64, 32, SMALL, torch.Generator().manual_seed(0))
    perturb(adapter)
    hidden, scale, t, ctx = inputs()
    base = adapter(hidden, scale, t, ctx)
    assert base.abs().max() > 0
    assert not torch.allclose(base, adapter(hidden, scale + 1, t, ctx))
    assert not torch.allclose(base, adapter(hidden, scale, t + 50, ctx))
    assert not torch.allclose(base, adapter(hidden, scale, t, ctx + 1))
    # per sample: sample 0 does not see sample 1
    alone = adapter(hidden[:1], scale[:1], t[:1], ctx[:1])
    torch.testing.assert_close(alone, base[:1], atol=1e-6, rtol=1e-5)


def test_parameter_count_and_relative_size():
    adapters = AdapterSet(LAYOUT, SMALL)
    count = adapters.parameter_count()
    assert count == sum(p.numel() for p in adapters.parameters()) > 0
    assert relative_size(adapters, count * 50) == pytest.approx(2.0)


def test_file_round_trip_keeps_weights_and_metadata(tmp_path):
    adapters = AdapterSet(LAYOUT, SMALL)
    perturb(adapters)
    made = adapter_file.AdapterFile(adapters, "abc123", {"model": "UNetModel", "family": "eps"}, (1.0, 8.0),
                                    {"steps": 10}, "python -m tools.training.agd", 1000)
    path = adapter_file.save(tmp_path / "a.safetensors", made)
    loaded = adapter_file.load(path)
    assert loaded.base_fingerprint == "abc123" and loaded.scale_range == (1.0, 8.0)
    assert loaded.architecture["family"] == "eps" and loaded.adapters.layout == adapters.layout
    assert loaded.adapters.config == SMALL and loaded.training == {"steps": 10}
    for key, value in adapters.flat_state_dict().items():
        assert torch.equal(value, loaded.adapters.flat_state_dict()[key])
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert int(meta["parameter_count"]) == adapters.parameter_count()
    assert json.loads(meta["scale_range"]) == [1.0, 8.0] and meta["command"].startswith("python")


def test_bad_files_are_refused_saying_why(tmp_path):
    adapters = AdapterSet(LAYOUT, SMALL)
    made = adapter_file.AdapterFile(adapters, "abc", {}, (1.0, 8.0))
    path = adapter_file.save(tmp_path / "a.safetensors", made)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        adapter_file.load(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"})
    with pytest.raises(ValueError, match="not an AGD adapter file"):
        adapter_file.load(tmp_path / "other.safetensors")
    meta = made.metadata()
    tensors = adapters.flat_state_dict()
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="do not fit the recorded layout"):
        adapter_file.load(tmp_path / "short.safetensors")
    save_file(adapters.flat_state_dict(), str(tmp_path / "meta.safetensors"), metadata={**meta, "scale_range": "x"})
    with pytest.raises(ValueError, match="malformed or missing AGD metadata"):
        adapter_file.load(tmp_path / "meta.safetensors")
    # Garbled sizes are checked against the tensors before anything is allocated from them.
    config = json.loads(meta["adapter_config"])
    for name, changed in (("wide", {"adapter_config": json.dumps({**config, "width": 10**9})}),
                          ("negative", {"architecture": meta["architecture"].replace("[", "[-", 1)})):
        save_file(adapters.flat_state_dict(), str(tmp_path / f"{name}.safetensors"), metadata={**meta, **changed})
        with pytest.raises(ValueError, match="do not fit the recorded layout|positive widths|at least 1"):
            adapter_file.load(tmp_path / f"{name}.safetensors")
    for name, change in (("nan", lambda t: t.fill_(float("nan"))), ("int", lambda t: t.to(torch.int32))):
        tensors = adapters.flat_state_dict()
        key = next(k for k in tensors if k.endswith("query.weight"))
        tensors[key] = change(tensors[key].clone())
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=meta)
        with pytest.raises(ValueError, match="NaN or inf|not floating point"):
            adapter_file.load(tmp_path / f"{name}.safetensors")
    with pytest.raises(ValueError, match="scale range .* is empty"):
        adapter_file.save(tmp_path / "reversed.safetensors", adapter_file.AdapterFile(adapters, "abc", {}, (8.0, 1.0)))
    assert not (tmp_path / "reversed.safetensors").exists()


def test_scale_outside_the_trained_range_is_refused():
    assert check_scale(5.0, (1.0, 12.0)) == 5.0
    for bad in (0.5, 12.5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            check_scale(bad, (1.0, 12.0))
    with pytest.raises(ValueError, match=r"outside the range the adapter was trained on, \[1, 12\]"):
        AGDPolicy(13.0, (1.0, 12.0))


def test_policy_is_one_evaluation_per_step_conditional_only():
    run = AGDPolicy(4.0, (1.0, 8.0)).start(10)
    step = StepContext(0, 10, torch.zeros(1), torch.ones(1), uncond_requested=True)
    assert run.needs_uncond(step) is False
    cond = torch.randn(1, 3, 4, 4)
    out = run.guide(cond, None, step)
    assert out.denoised is cond and out.renoise_uncond(cond) is cond


@pytest.mark.parametrize("bad", [{"width": 0}, {"time_features": 7}, {"seed": 1.5}, {"bogus": 1}])
def test_bad_adapter_settings_are_refused(bad):
    with pytest.raises(ValueError):
        AdapterConfig.from_dict({**SMALL.to_dict(), **bad})


def test_schedule_warms_up_then_decays_to_zero():
    from guidance_lab.guiders.agd.training import lr_at

    lrs = [lr_at(s, 100, 1e-3, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-5


def test_batches_depend_on_seed_and_step_only_and_split_evenly_over_processes():
    import numpy as np

    from guidance_lab.guiders.agd.training import batch_indices

    whole = batch_indices(0, 7, 1000, 8)
    assert np.array_equal(whole, batch_indices(0, 7, 1000, 8))
    assert not np.array_equal(whole, batch_indices(0, 8, 1000, 8))
    shares = [batch_indices(0, 7, 1000, 8, rank, 2) for rank in (0, 1)]
    assert np.array_equal(np.concatenate(shares), whole)
    with pytest.raises(ValueError, match="does not split evenly"):
        batch_indices(0, 7, 1000, 9, 0, 2)


def test_noise_space_loss_is_the_denoised_error_weighted_by_one_over_sigma_squared():
    from guidance_lab.guiders.agd.training import agd_loss

    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([2.0, 0.5])
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(agd_loss(pred, target, sigma, "denoised"), per.mean())
    torch.testing.assert_close(agd_loss(pred, target, sigma, "noise"), (per / sigma**2).mean())
    with pytest.raises(ValueError):
        agd_loss(pred, target, sigma, "x0")


def test_trajectory_store_is_memory_mapped_and_reads_batches(tmp_path):
    import numpy as np

    from guidance_lab.guiders.agd.trajectories import TrajectoryStore

    store = TrajectoryStore.create(tmp_path, {"scale_range": [1, 8], "steps": 2}, 4, (3, 2, 2), (2, 5, 6))
    # trajectory-major: trajectory 1's second evaluation is sample 3, and sample 3 is a step-1 sample
    assert store.row(1, 1) == 3 and store.step_of(np.arange(4)).tolist() == [0, 1, 0, 1]
    store.states[:] = np.arange(48, dtype=np.float16).reshape(4, 3, 2, 2)
    store.targets[:] = 1
    store.sigmas[:] = [14.6, 3.0, 1.0, 0.03]
    store.scales[:] = 4.5
    store.prompt_index[:] = [0, 0, 1, 1]
    store.prompts[:] = np.stack([np.zeros((5, 6)), np.ones((5, 6))])
    for a in (store.states, store.targets, store.sigmas, store.scales, store.prompt_index, store.prompts):
        a.flush()
    opened = TrajectoryStore.open(tmp_path)
    assert isinstance(opened.states, np.memmap) and len(opened) == 4 and opened.meta["complete"] is False
    x, sigma, context, scale, target = opened.batch(np.array([3, 0]), "cpu")
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    assert sigma.tolist() == pytest.approx([14.6, 0.03], rel=1e-6)  # sorted rows: 0, 3
    assert context[:, 0, 0].tolist() == [0.0, 1.0] and scale.tolist() == [4.5, 4.5]
    with pytest.raises(FileNotFoundError, match="run `generate` first"):
        TrajectoryStore.open(tmp_path / "nothing")


def test_a_data_set_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    """Sparse memory maps would fill the disk mid-run and kill the process (SIGBUS); the size
    is checked against the free space first."""
    from guidance_lab.guiders.agd.trajectories import TrajectoryStore

    root = tmp_path / "data"
    with pytest.raises(ValueError, match=r"need .* GiB .* free; use fewer prompts"):
        TrajectoryStore.create(root, {"steps": 20}, samples=10**12, state_shape=(3, 32, 32), prompt_shape=(4, 8, 16))
    assert not root.exists()


def test_training_checkpoints_round_trip_an_optimizer_and_refuse_other_files(tmp_path):
    """Checkpoints are safetensors (nothing unpickled) that give back the same types: integer
    optimizer state keys (which ``load_state_dict`` matches to parameters), tuples, plain values."""
    from guidance_lab.guiders import training_checkpoint

    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3, betas=(0.9, 0.99))
    layer(torch.randn(4, 3)).square().mean().backward()
    optimizer.step()
    state = {"adapters": layer.state_dict(), "optimizer": optimizer.state_dict(), "step": 7,
             "settings": {"lr": 1e-3, "ok": True, "name": None, "shape": (3, 2)}}
    path = tmp_path / "checkpoint.safetensors"
    training_checkpoint.save(path, state)
    back = training_checkpoint.load(path)
    assert back["step"] == 7 and back["settings"] == state["settings"]
    assert list(back["optimizer"]["state"]) == [0, 1] and back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(back["optimizer"])
    for old, new in zip(optimizer.state.values(), fresh.state.values()):
        assert torch.equal(old["exp_avg"], new["exp_avg"]) and torch.equal(old["step"], new["step"])
    assert all(torch.equal(v, back["adapters"][k]) for k, v in layer.state_dict().items())
    (tmp_path / "other.safetensors").write_bytes(b"not a checkpoint")
    adapter_file_path = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(adapter_file_path))
    for bad in ("other.safetensors", "weights.safetensors", "missing.safetensors"):
        with pytest.raises(ValueError, match="training checkpoint"):
            training_checkpoint.load(tmp_path / bad)


def test_adaptive_guidance_refuses_agd_and_passes_its_inner_run_options_on():
    from guidance_lab.guiders.adaptive import AdaptivePolicy
    from guidance_lab.guiders.apg import APGPolicy

    with pytest.raises(ValueError, match="never makes one"):
        AdaptivePolicy(inner=AGDPolicy(5.0, (1.0, 8.0)))
    inner = APGPolicy(5.0)
    assert AdaptivePolicy(inner=inner).transformer_options() == inner.transformer_options()


# Issue 31: the adapters of the other families (pure torch parts).
OFFSET_LAYOUT = {"double_block_0": (64, 32, 16), "single_block_0": (64, 32, 16), "double_block_1": (48, 32, 0)}


def test_an_untrained_offset_adapter_adds_exactly_zero_and_a_trained_one_a_token_independent_offset():
    adapter = OffsetAdapter(64, 32, SMALL, torch.Generator().manual_seed(0), pooled_dim=16)
    _hidden, scale, timestep, context = inputs()
    pooled = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    out = adapter(scale, timestep, context, pooled)
    assert out.shape == (2, 1, 64) and torch.equal(out, torch.zeros_like(out))
    perturb(adapter)
    base = adapter(scale, timestep, context, pooled)
    for changed in ((scale + 1, timestep, context, pooled), (scale, timestep / 2, context, pooled),
                    (scale, timestep, context + 1, pooled), (scale, timestep, context, pooled + 1)):
        assert (adapter(*changed) - base).abs().max() > 1e-4
    # the prompt enters as its token mean: the order of its tokens does not matter
    torch.testing.assert_close(adapter(scale, timestep, context.flip(1), pooled), base)
    with pytest.raises(ValueError, match="pooled text embedding"):
        adapter(scale, timestep, context)


def test_a_cross_attention_adapter_with_a_pooled_embedding_takes_it_as_one_more_token():
    adapter = CrossAttentionAdapter(64, 32, SMALL, torch.Generator().manual_seed(0), pooled_dim=24)
    hidden, scale, timestep, context = inputs()
    pooled = torch.randn(2, 24, generator=torch.Generator().manual_seed(5))
    assert torch.equal(adapter(hidden, scale, timestep, context, pooled), torch.zeros(2, 5, 64))
    assert adapter.tokens(scale, timestep, context, pooled).shape == (2, 3 + 7, SMALL.width)
    perturb(adapter)
    base = adapter(hidden, scale, timestep, context, pooled)
    assert (adapter(hidden, scale, timestep, context, pooled + 1) - base).abs().max() > 1e-4
    # no pooled width: the SD1.x adapter exactly as before (no extra module, same initial weights)
    plain = CrossAttentionAdapter(64, 32, SMALL, torch.Generator().manual_seed(0))
    assert plain.pooled_token is None and plain.tokens(scale, timestep, context).shape == (2, 2 + 7, SMALL.width)


def test_a_block_attention_adapter_starts_at_zero_then_corrects_each_token_by_its_own_state():
    adapter = BlockAttentionAdapter(64, 32, SMALL, torch.Generator().manual_seed(0), pooled_dim=16)
    hidden, scale, timestep, context = inputs(tokens=6)
    pooled = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    out = adapter(hidden, scale, timestep, context, pooled)
    assert out.shape == hidden.shape and torch.equal(out, torch.zeros_like(out))
    perturb(adapter)
    base = adapter(hidden, scale, timestep, context, pooled)
    assert (base[:, 0] - base[:, 1]).abs().max() > 1e-4  # per token, not one offset for all
    for changed in ((hidden, scale + 1, timestep, context, pooled), (hidden, scale, timestep / 2, context, pooled),
                    (hidden, scale, timestep, context + 1, pooled), (hidden, scale, timestep, context, pooled + 1)):
        assert (adapter(*changed) - base).abs().max() > 1e-4
    # the query reads the layer-normalised state: a block's residual stream may grow without
    # the adapter's attention saturating
    torch.testing.assert_close(adapter(hidden * 50 + 3, scale, timestep, context, pooled), base,
                               atol=1e-4, rtol=1e-4)
    # a token's correction depends on that token alone (attention runs over the prompt, not the tokens)
    torch.testing.assert_close(adapter(hidden[:, :3], scale, timestep, context, pooled), base[:, :3])


def flux_file_round_trip(kind: str, tmp_path):
    """(adapters, their AdapterFile, the file read back) for perturbed transformer adapters of ``kind``."""
    adapters = AdapterSet(OFFSET_LAYOUT, SMALL, kind)
    perturb(adapters)
    made = adapter_file.AdapterFile(adapters, "f1", {"model": "Flux", "architecture": "flux", "family": "flow"},
                                    (1.0, 6.0))
    return adapters, made, adapter_file.load(adapter_file.save(tmp_path / "flux.safetensors", made))


def test_block_attention_adapter_files_round_trip_and_are_told_from_offset_ones(tmp_path):
    adapters, made, loaded = flux_file_round_trip("block_attention", tmp_path)
    assert loaded.adapters.kind == "block_attention" and loaded.adapters.layout == adapters.layout
    hidden, scale, timestep, context = inputs()
    name = sorted(OFFSET_LAYOUT)[0]
    pooled = torch.randn(2, OFFSET_LAYOUT[name][2]) if OFFSET_LAYOUT[name][2] else None
    torch.testing.assert_close(loaded.adapters(name, hidden, scale, timestep, context, pooled),
                               adapters(name, hidden, scale, timestep, context, pooled), rtol=0, atol=0)
    from safetensors.torch import save_file

    # its tensors said to be an offset adapter's do not fit
    architecture = {**json.loads(made.metadata()["architecture"]), "adapter_kind": "offset"}
    save_file(adapters.flat_state_dict(), str(tmp_path / "liar.safetensors"),
              metadata={**made.metadata(), "architecture": json.dumps(architecture)})
    with pytest.raises(ValueError, match="do not fit the recorded layout"):
        adapter_file.load(tmp_path / "liar.safetensors")


def test_offset_adapter_files_record_their_kind_and_layout_and_round_trip(tmp_path):
    adapters, made, loaded = flux_file_round_trip("offset", tmp_path)
    assert loaded.adapters.kind == "offset" and loaded.architecture["architecture"] == "flux"
    assert loaded.adapters.layout == {k: tuple(v) for k, v in OFFSET_LAYOUT.items()}
    for key, value in adapters.flat_state_dict().items():
        assert torch.equal(value, loaded.adapters.flat_state_dict()[key])
    # a file written before issue 31 has no kind: cross-attention, its two-width layout as it was
    old = AdapterSet(LAYOUT, SMALL)
    path = adapter_file.save(tmp_path / "old.safetensors", adapter_file.AdapterFile(old, "f0", {}, (1.0, 8.0)))
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    architecture = json.loads(meta["architecture"])
    del architecture["adapter_kind"]
    save_file(old.flat_state_dict(), str(tmp_path / "v1.safetensors"),
              metadata={**meta, "architecture": json.dumps(architecture)})
    v1 = adapter_file.load(tmp_path / "v1.safetensors")
    assert v1.adapters.kind == "cross_attention" and v1.adapters.layout == LAYOUT
    # an offset layout said to be cross-attention does not fit its tensors
    architecture = {**json.loads(made.metadata()["architecture"]), "adapter_kind": "cross_attention"}
    save_file(adapters.flat_state_dict(), str(tmp_path / "liar.safetensors"),
              metadata={**made.metadata(), "architecture": json.dumps(architecture)})
    with pytest.raises(ValueError, match="do not fit the recorded layout|positive widths"):
        adapter_file.load(tmp_path / "liar.safetensors")


def test_trajectory_store_keeps_the_extra_conditioning_per_prompt(tmp_path):
    import numpy as np

    from guidance_lab.guiders.agd.trajectories import TrajectoryStore

    meta = {"scale_range": [1, 8], "steps": 2, "extras": ["guidance", "y"]}
    store = TrajectoryStore.create(tmp_path, meta, 4, (16, 1, 2, 2), (2, 5, 6), {"y": (2, 3), "guidance": (2,)})
    store.prompt_index[:] = [0, 0, 1, 1]
    store.extras["y"][:] = [[1, 2, 3], [4, 5, 6]]
    store.extras["guidance"][:] = [3.5, 2.0]
    for a in (store.prompt_index, *store.extras.values()):
        a.flush()
    opened = TrajectoryStore.open(tmp_path)
    extras = opened.batch_extras(np.array([3, 0]), "cpu")  # batch()'s order: rows 0, 3
    assert extras["y"].tolist() == [[1, 2, 3], [4, 5, 6]] and extras["guidance"].tolist() == [3.5, 2.0]
    with pytest.raises(ValueError, match="extra conditioning"):
        TrajectoryStore.create(tmp_path / "b", meta, 4, (3, 2, 2), (2, 5, 6), {"y": (2, 3)})
