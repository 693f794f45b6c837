"""The hallucination score (guiders/trajectory_variance.py): the running variance equals the
stacked one, the window follows noise level in every family, a sample's score is the same
alone and in a batch, and scoring changes neither the NFE nor the step loop's host reads."""

import math

import pytest
import torch

from guidance_lab.guiders import CFGPolicy, GuidedRun
from guidance_lab.guiders.trajectory_variance import (DEFAULT_WINDOW, TrajectoryVariance, noise_to_signal,
                                                      trajectory_variance, window_steps)
from guidance_lab.samplers import SAMPLERS

from .test_guided_run import finish_without_read_back
from .toy import PolicyModel, mixed_pair

SIGMAS = {"eps": torch.tensor([14.0, 8.0, 5.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.2, 0.08, 0.0], dtype=torch.float64),
          "flow": torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], dtype=torch.float64)}


def test_running_score_equals_the_variance_of_the_stacked_trajectory():
    estimates = torch.randn(7, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 + 5
    tv = TrajectoryVariance([0.5] * 7 + [0.0], "eps", window=1.0)
    for i, x in enumerate(estimates):
        tv.note(i, x)
    assert tv.count == 7
    torch.testing.assert_close(tv.scores(), trajectory_variance(estimates), rtol=1e-5, atol=1e-7)
    # Mean over elements of Var_t, 1/T normalisation (Aithal et al. 2024, Sec. 6).
    by_hand = ((estimates - estimates.mean(0)) ** 2).mean(0).flatten(1).mean(1)
    torch.testing.assert_close(trajectory_variance(estimates), by_hand)


def test_a_constant_trajectory_scores_zero_and_a_swinging_one_does_not():
    tv = TrajectoryVariance([0.3, 0.2, 0.1, 0.0], "eps")
    for i, value in enumerate((1.0, -1.0, 1.0)):
        tv.note(i, torch.stack([torch.ones(3, 2, 2), torch.full((3, 2, 2), value)]))
    assert tv.scores()[0] == 0 and tv.scores()[1] > 0.8


def test_the_window_is_a_noise_level_the_same_in_every_family():
    # Flow's sigma t is noise-to-signal t / (1 - t): t = 1/3 is the level of an eps model's 0.5.
    assert noise_to_signal(0.5, "eps") == 0.5
    assert math.isclose(noise_to_signal(1 / 3, "flow"), 0.5)
    assert noise_to_signal(1.0, "flow") == math.inf
    assert window_steps(SIGMAS["eps"].tolist(), "eps", 0.5) == [False] * 7 + [True] * 3
    flow = window_steps(SIGMAS["flow"].tolist(), "flow", 0.5)
    assert flow == [noise_to_signal(s, "flow") <= 0.5 for s in SIGMAS["flow"][:-1].tolist()]
    assert sum(flow) == 3  # t = 0.3, 0.2, 0.1 (0.3 / 0.7 < 0.5 < 0.4 / 0.6)
    # Twice the steps in the same band: twice the estimates, the same band of noise levels.
    fine = [0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0]
    assert sum(window_steps(fine, "eps", 0.2)) == 4
    # An inversion's ascending schedule ends in noise: nothing of it is scored.
    assert window_steps(SIGMAS["eps"].flip(0).tolist(), "eps", 0.5) == [False] * 10
    with pytest.raises(ValueError, match="family"):
        noise_to_signal(0.5, "vp")
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="window"):
            window_steps([1.0, 0.0], "eps", bad)


def test_estimates_outside_the_window_are_ignored():
    tv = TrajectoryVariance([2.0, 1.0, 0.4, 0.2, 0.0], "eps", window=0.5)
    for i, value in enumerate((100.0, -100.0, 1.0, 1.0)):
        tv.note(i, torch.full((1, 2), value))
    tv.note(7, torch.full((1, 2), 50.0))  # beyond the schedule (a sampler's extra evaluation)
    assert tv.count == 2 and tv.scores().tolist() == [0.0]


class ScoredModel(PolicyModel):
    """The toy guided model with the host-side schedule handed to its run, as the bridge does."""

    def __init__(self, policy, pair, sigmas, window):
        super().__init__(policy, pair, len(sigmas) - 1)
        self.run = GuidedRun(policy, len(sigmas) - 1, len(pair), pair.family, schedule=sigmas.tolist(),
                             variance_window=window)


def scored_run(family, samples, sampler="euler", window=2.0, scale=3.0):
    pair = mixed_pair(family)[samples]
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)[samples]
    sigmas = SIGMAS[family]
    x = x * (sigmas[0] if family == "eps" else 1.0)
    model = ScoredModel(CFGPolicy(scale), pair, sigmas, window)
    SAMPLERS[sampler](model, x, sigmas, {}, callback=model.step_done, disable=True,
                      **({"family": family} if sampler != "euler" else {}))
    return model.run.finish()


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_cfg_pp"])
def test_a_sample_scores_the_same_alone_and_in_a_batch(family, sampler):
    batch = scored_run(family, [0, 1, 2], sampler).hallucination
    assert batch["estimates"] >= 2 and len(batch["score"]) == 3
    assert len(set(batch["score"])) == 3  # three different samples, three different scores
    for i in range(3):
        alone = scored_run(family, [i], sampler).hallucination
        assert alone["score"] == [batch["score"][i]], f"sample {i}"


def test_scoring_costs_no_evaluation():
    scored = scored_run("eps", [0, 1, 2])
    pair = mixed_pair("eps")
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 14
    plain = PolicyModel(CFGPolicy(3.0), pair, len(SIGMAS["eps"]) - 1)
    SAMPLERS["euler"](plain, x, SIGMAS["eps"], {}, callback=plain.step_done, disable=True)
    unscored = plain.run.finish()
    assert unscored.hallucination is None
    assert scored.nfe_per_step == unscored.nfe_per_step and scored.total_nfe == unscored.total_nfe == 2 * 3 * 10
    assert scored.to_dict()["hallucination"]["score"] is not None


def test_a_window_with_fewer_than_two_estimates_gives_no_score_and_says_so():
    record = scored_run("eps", [0, 1], window=0.1)
    assert record.hallucination["estimates"] == 1 and record.hallucination["score"] is None
    assert "at least two denoised estimates" in record.hallucination["note"] and not record.warnings


def test_scoring_reads_nothing_back_from_the_device_until_the_run_finishes():
    run = GuidedRun(CFGPolicy(5.0), 3, 2, plan=[2, 2, 1], schedule=[0.9, 0.5, 0.2, 0.0], variance_window=1.0)
    record = finish_without_read_back(run)
    assert record.hallucination["estimates"] == 5 and len(record.hallucination["score"]) == 2
    assert "hallucination score" in record.summary()


def test_default_window_is_a_positive_noise_level():
    assert 0 < DEFAULT_WINDOW < 10
