import math

import numpy as np
import pytest
import torch

from tools.training.dataset import make_batch
from tools.quality.metrics import (SCENE_FEATURES, distance_to_reference, diversity, frechet_distance,
                                          scene_distance, scene_features)


@pytest.fixture(scope="module")
def real():
    images, prompts, _ = make_batch(4242, 0, 240)
    return images, prompts


def test_diversity_is_zero_for_identical_seeds_and_grows_with_difference():
    base = np.random.default_rng(0).uniform(0, 1, (1, 8, 8, 3))
    same = np.repeat(base, 4, 0)
    assert diversity(same, ["p"] * 4) == 0.0
    two = np.concatenate([np.zeros((2, 8, 8, 3)), np.ones((2, 8, 8, 3))])
    # pairs: (0,0)=0, (1,1)=0, four cross pairs with RMSE 1 -> mean 4/6 for one prompt
    assert diversity(two, ["p"] * 4) == pytest.approx(4 / 6)
    # grouping is by prompt: each prompt's seeds are identical here
    assert diversity(two, ["a", "a", "b", "b"]) == 0.0
    with pytest.raises(ValueError):
        diversity(two, ["a", "b", "c", "d"])


def test_distance_to_reference_matches_closed_form():
    ref = torch.full((3, 16, 16, 3), 0.5)
    shifted = ref + 0.1
    d = distance_to_reference(shifted, ref)
    assert d["rmse"] == pytest.approx(0.1, rel=1e-6)
    assert d["psnr"] == pytest.approx(20.0, rel=1e-4)  # 10 log10(1 / 0.01)
    assert math.isinf(distance_to_reference(ref, ref)["psnr"])
    with pytest.raises(ValueError):
        distance_to_reference(ref[:2], ref)


def test_frechet_distance_of_a_set_to_itself_is_zero_and_sees_a_mean_shift():
    x = np.random.default_rng(1).normal(size=(500, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x + np.array([2.0, 0, 0, 0]), x) == pytest.approx(4.0, rel=1e-6)


def test_scene_distance_separates_real_from_degraded_images(real):
    images, _ = real
    features = scene_features(images)
    assert features.shape == (len(images), len(SCENE_FEATURES))
    other, _, _ = make_batch(99, 0, 240)
    same_distribution = scene_distance(other, features)
    rng = np.random.default_rng(2)
    noisy = np.clip(other + rng.normal(0, 0.08, other.shape), 0, 1)
    saturated = np.clip((other - 0.5) * 2.5 + 0.5, 0, 1)
    assert same_distribution < 0.5 * scene_distance(noisy, features)
    assert same_distribution < 0.5 * scene_distance(saturated, features)


def test_psnr_stays_finite_when_some_pairs_are_identical():
    ref = torch.full((2, 4, 4, 3), 0.5)
    images = ref.clone()
    images[1] += 0.1  # set MSE = 0.005 -> PSNR 10 log10(200)
    assert distance_to_reference(images, ref)["psnr"] == pytest.approx(10 * math.log10(200), rel=1e-4)
