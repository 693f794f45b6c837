import numpy as np
import pytest

from tools.training.dataset import (BACKGROUNDS, COLOURS, SHAPES, Scene, make_batch,
                                                parse_prompt, prompt_for, sample_scene)


def test_sample_is_the_same_whatever_the_batch_split():
    whole, prompts, scenes = make_batch(7, 0, 12)
    first, p1, _ = make_batch(7, 0, 5)
    rest, p2, _ = make_batch(7, 5, 7)
    assert np.array_equal(whole, np.concatenate([first, rest]))
    assert prompts == p1 + p2
    assert np.array_equal(make_batch(7, 9, 1)[0][0], whole[9])
    assert sample_scene(7, 3) == scenes[3]


def test_seeds_differ():
    assert not np.array_equal(make_batch(1, 0, 4)[0], make_batch(2, 0, 4)[0])


def test_prompt_round_trip():
    for i in range(200):
        scene = sample_scene(3, i)
        assert parse_prompt(prompt_for(scene)) == (scene.shape, scene.colour, scene.background)
    scene = Scene("circle", "red", "white", (16.0, 16.0), 20.0, 0.0)
    assert prompt_for(scene) == "a red circle on a white background"
    assert parse_prompt("An  ORANGE star on a gray background ") == ("star", "orange", "gray")


@pytest.mark.parametrize("text", ["a red hexagon on a white background",
                                  "a mauve circle on a white background",
                                  "a red circle on a plaid background", "red circle", ""])
def test_parse_prompt_rejects_unknown_words(text):
    with pytest.raises(ValueError):
        parse_prompt(text)


def test_vocabulary_needs_the_prompt():
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8 and len(BACKGROUNDS) >= 3
    assert len(SHAPES) * len(COLOURS) * len(BACKGROUNDS) >= 6 * 8 * 3
    rgb = {**COLOURS, **BACKGROUNDS}
    names = list(rgb)
    # Every colour far from every other colour and backdrop (0..441 RGB distance).
    closest = min(np.linalg.norm(np.subtract(rgb[a], rgb[b]))
                  for i, a in enumerate(names) for b in names[i + 1:])
    assert closest > 60, closest


def test_images_are_float_hwc_in_unit_range():
    for size in (32, 48):
        images, prompts, scenes = make_batch(11, 0, 8, size=size)
        assert images.shape == (8, size, size, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 1
        assert len(prompts) == len(scenes) == 8
    assert make_batch(11, 0, 0)[0].shape == (0, 32, 32, 3)


def test_border_is_pure_background_and_edges_are_antialiased():
    images, _, scenes = make_batch(5, 0, 50)
    for image, scene in zip(images, scenes):
        bg = np.asarray(BACKGROUNDS[scene.background], np.float32) / 255
        assert np.allclose(image[0], bg) and np.allclose(image[:, -1], bg)
    fg_or_bg = [np.isclose(images[i], np.asarray(COLOURS[s.colour], np.float32) / 255).all(-1)
                | np.isclose(images[i], np.asarray(BACKGROUNDS[s.background], np.float32) / 255).all(-1)
                for i, s in enumerate(scenes)]
    assert not np.all(fg_or_bg)  # mixed edge pixels exist


def test_scenes_vary():
    scenes = [sample_scene(13, i) for i in range(300)]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert np.std([s.center[0] for s in scenes]) > 2 and np.std([s.center[1] for s in scenes]) > 2
    assert np.std([s.size for s in scenes]) > 1.5
    rotated = [s.rotation for s in scenes if s.shape in ("square", "triangle", "star", "cross")]
    assert np.std(rotated) > 5
    assert all(s.rotation == 0 for s in scenes if s.shape in ("circle", "ring"))
    for s in scenes:  # inside the frame with a margin, so the border stays background
        assert s.size / 2 + 1 <= min(s.center) and max(s.center) <= 32 - s.size / 2 - 1
