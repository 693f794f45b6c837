"""Issue 11 in the core: the fit at ridge 0, nothing non-finite saved, AG inside AG reports its own settings."""

import math

import pytest
import torch

from guidance_lab.guiders import CFGPolicy, linear_ag_file
from guidance_lab.guiders.adaptive import AdaptivePolicy
from guidance_lab.guiders.linear_ag import FEATURES, NormalEquations, features


def equations_with_empty_history(steps=2, seed=0):
    """Normal equations whose step 0 has all-zero history columns, as every real calibration has."""
    eq = NormalEquations(steps)
    g = torch.Generator().manual_seed(seed)
    truth = torch.tensor([0.8, 0.1, -0.2, 0.3, 0.05], dtype=torch.float64)
    prev = (None, None)
    for step in range(steps):
        x, eps_c = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
        h = features(x, torch.tensor([1.0, 1.0]), eps_c, *prev)
        y = h @ truth
        eq.add(step, h, y)
        prev = (eps_c, y.reshape(eps_c.shape).float())
    return eq, truth


def test_item4_ridge_zero_the_declared_minimum_fits():
    """Issue 11, item 4: ridge = 0 made the step-0 normal equations singular (raw error)."""
    eq, truth = equations_with_empty_history()
    coef, rel = eq.solve(0.0)
    assert torch.isfinite(coef).all() and torch.isfinite(rel).all()
    # Step 0: minimum norm, so the empty history columns get exactly zero weight.
    assert coef[0, 2] == 0 and coef[0, 3] == 0
    torch.testing.assert_close(coef[1], truth, atol=1e-8, rtol=0)
    assert float(rel.max()) < 1e-6  # the residual formula cancels to ~sqrt(eps)


def test_a_positive_ridge_is_the_closed_form_ridge_solution():
    eq, _ = equations_with_empty_history(seed=1)
    coef, _ = eq.solve(1e-3)
    hth, hty = eq.hth[:, 0], eq.hty[:, 0]  # every step at lag 1
    scale = hth.diagonal(dim1=1, dim2=2).mean(dim=1)
    closed = torch.linalg.solve(hth + 1e-3 * scale[:, None, None] * torch.eye(len(FEATURES), dtype=torch.float64),
                                hty[..., None])[..., 0]
    torch.testing.assert_close(coef, closed, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("ridge", [math.nan, math.inf, -1e-3])
def test_a_non_finite_or_negative_ridge_is_refused(ridge):
    eq, _ = equations_with_empty_history()
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        eq.solve(ridge)


def test_item2_nothing_non_finite_is_saved(tmp_path):
    """Issue 11, item 2: a NaN fit replaced a good calibration with NaN coefficients."""
    eq, _ = equations_with_empty_history(steps=1)
    eq.hth[0, 0, 0, 0] = math.nan
    cal = linear_ag_file.Calibration(eq, torch.zeros(1), "euler", [1.0, 0.0], 5.0, "eps", "f" * 16, 1e-4, {})
    with pytest.raises(ValueError, match="non-finite"):
        linear_ag_file.save(tmp_path / "x.safetensors", cal)
    assert list(tmp_path.iterdir()) == []


def test_item8_ag_inside_ag_reports_its_own_threshold_and_space():
    """Issue 11, item 8: the inner AG's threshold and space overwrote the outer one's."""
    inner = AdaptivePolicy(threshold=0.5, inner=CFGPolicy(scale=4.0), space="eps")
    outer = AdaptivePolicy(threshold=0.9, inner=inner, space="x0")
    settings = outer.settings()
    assert settings["threshold"] == 0.9 and settings["space"] == "x0" and settings["inner"] == "ag"
    assert settings["inner_threshold"] == 0.5 and settings["inner_space"] == "eps"
    assert settings["inner_inner"] == "cfg" and settings["scale"] == 4.0
    triple = AdaptivePolicy(threshold=0.99, inner=outer).settings()
    assert (triple["threshold"], triple["inner_threshold"], triple["inner_inner_threshold"]) == (0.99, 0.9, 0.5)


@pytest.mark.parametrize("damage", ["flat_hth", "negative_ridge"])
def test_a_damaged_calibration_file_is_refused_with_a_message(tmp_path, damage):
    from safetensors import safe_open
    from safetensors.torch import save_file

    eq, _ = equations_with_empty_history(steps=2)
    path = tmp_path / "cal.safetensors"
    linear_ag_file.save(path, linear_ag_file.Calibration(eq, torch.zeros(2), "euler", [2.0, 1.0, 0.0], 5.0, "eps",
                                                         "f" * 16, 1e-4, {}))
    assert linear_ag_file.load(path).coefficients(frozenset({0})).shape == (2, len(FEATURES))
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if damage == "flat_hth":
        tensors["hth"] = tensors["hth"].reshape(-1)
    else:
        meta["ridge"] = "-1.0"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="lacks or garbles"):
        linear_ag_file.load(path)
