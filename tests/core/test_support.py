"""The in-support analyser (tools/quality/support.py), the ground truth of hallucination
detection, against hand-made renders on seeds its thresholds were not set on (1 and 2)."""

import numpy as np
import pytest

from tools.quality import support_renders as renders
from tools.quality.support import in_support, support

HELD_OUT = 31415
COUNT = 60


@pytest.mark.parametrize("noise, blur", [(0.0, 0.0), (0.03, 0.7)])
def test_the_dataset_s_own_images_are_in_support(noise, blur):
    accepted = in_support(renders.in_support_renders(HELD_OUT, COUNT, noise, blur))
    assert accepted.mean() >= 0.95, f"accepted {accepted.mean():.3f}"


@pytest.mark.parametrize("kind, least", [("two_shapes", 0.95), ("mixed_colour", 0.95), ("broken_backdrop", 0.95),
                                         # Some blends land within a clean shape's pixel error of
                                         # one shape (a circle-square blend is nearly a circle).
                                         ("between_shapes", 0.5)])
def test_out_of_support_renders_are_rejected_for_the_right_reason(kind, least):
    found = [support(im) for im in renders.renders(kind, HELD_OUT, COUNT)]
    rejected = np.mean([not s.in_support for s in found])
    assert rejected >= least, f"{kind}: rejected {rejected:.3f}"
    reason = {"two_shapes": "shapes", "mixed_colour": "colour", "between_shapes": "outline",
              "broken_backdrop": None}[kind]
    if reason:
        assert np.mean([reason in s.reasons for s in found if not s.in_support]) >= 0.8


def test_renders_are_deterministic_and_bad_input_is_refused():
    assert np.array_equal(renders.renders("two_shapes", 3, 4), renders.renders("two_shapes", 3, 4))
    with pytest.raises(ValueError, match="unknown kind"):
        renders.renders("three_shapes", 0, 1)
    with pytest.raises(ValueError, match="RGB"):
        support(np.zeros((8, 8)))
    blank = support(np.full((32, 32, 3), 0.5))
    assert not blank.in_support and "shapes" in blank.reasons
