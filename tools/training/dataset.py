"""Procedural scenes, "a red circle on a white background": one shape, one colour, one backdrop.

Every sample is drawn from its own generator seeded by ``(seed, index)``, so sample
``i`` of seed ``s`` is the same image whatever the batch split or order. Shapes are
rasterised at 4x and box-filtered down, so edges are anti-aliased like a model's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Chosen so that quality.shapes tells them apart at 32x32 under any rotation: a hole
# (ring), two concave shapes with different solidity (star, cross) and three convex
# ones with different fill of their minimum-area rectangle (square, circle, triangle).
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")

# Every channel stays inside [20, 235]: the data itself never clips, so clipped pixels
# in generated images are the sampler's doing (over-saturation at high CFG).
COLOURS = {
    "red": (215, 40, 40),
    "orange": (235, 135, 25),
    "yellow": (230, 210, 30),
    "green": (40, 165, 60),
    "cyan": (30, 195, 210),
    "blue": (40, 70, 215),
    "purple": (140, 40, 200),
    "pink": (235, 120, 185),
}
BACKGROUNDS = {
    "white": (235, 235, 235),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}

# Shape diameter as a fraction of the image side; below ~0.4 (13 px at 32x32) the
# star's arms and the ring's hole get too thin to survive anti-aliasing.
MIN_SIZE, MAX_SIZE = 0.40, 0.75
SUPERSAMPLE = 4
# Rotational symmetry in degrees: rotations are drawn from [0, period).
_PERIOD = {"circle": 0.0, "ring": 0.0, "square": 90.0, "triangle": 120.0, "star": 72.0, "cross": 90.0}
RING_INNER = 0.5
STAR_INNER = 0.42
CROSS_HALF_WIDTH = 1 / 3

_PROMPT = re.compile(r"^an? (\S+) (\S+) on an? (\S+) background$")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    center: tuple  # (x, y) in pixels of the output image, origin at the top-left corner
    size: float  # diameter of the shape's circumscribed circle, in pixels
    rotation: float  # degrees, counter-clockwise; 0 for circle and ring
    image_size: int = 32


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt_of(shape: str, colour: str, background: str) -> str:
    """The dataset's prompt template, e.g. "a red circle on a white background"."""
    return f"{_article(colour)} {colour} {shape} on {_article(background)} {background} background"


def vocabulary_prompts() -> list:
    """Every shape x colour x background prompt of the vocabulary (144), in that order."""
    return [prompt_of(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS]


def prompt_for(scene: Scene) -> str:
    """The prompt describing a scene."""
    return prompt_of(scene.shape, scene.colour, scene.background)


def parse_prompt(text: str) -> tuple:
    """(shape, colour, background) of a prompt in the dataset's template; ValueError otherwise."""
    match = _PROMPT.match(" ".join(text.lower().split()))
    if match is None:
        raise ValueError(f"not a prompt of the form 'a <colour> <shape> on a <background> background': "
                         f"{text!r}")
    colour, shape, background = match.groups()
    for word, known in ((colour, COLOURS), (shape, SHAPES), (background, BACKGROUNDS)):
        if word not in known:
            raise ValueError(f"unknown word {word!r} in prompt {text!r}; known: {sorted(known)}")
    return shape, colour, background


def sample_scene(seed: int, index: int, image_size: int = 32) -> Scene:
    """Scene ``index`` of dataset ``seed``, independent of every other sample."""
    rng = np.random.default_rng([seed, index])
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE) * image_size)
    # One pixel of margin so the image border is pure background.
    low, high = size / 2 + 1, image_size - size / 2 - 1
    center = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
    rotation = float(rng.uniform(0, _PERIOD[shape])) if _PERIOD[shape] else 0.0
    return Scene(shape, colour, background, center, size, rotation, image_size)


def _polygon(shape: str, radius: float) -> np.ndarray:
    """Vertices (k, 2) of a polygonal shape of circumradius ``radius`` at rotation 0."""
    if shape == "square":
        angles = np.deg2rad(45 + 90 * np.arange(4))
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == "triangle":
        angles = np.deg2rad(-90 + 120 * np.arange(3))
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == "star":
        angles = np.deg2rad(-90 + 36 * np.arange(10))
        radii = radius * np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    if shape == "cross":
        # A plus whose arm corners lie on the circumscribed circle.
        arm = radius / np.hypot(1.0, CROSS_HALF_WIDTH)
        w = arm * CROSS_HALF_WIDTH
        quarter = np.array([[arm, -w], [arm, w], [w, w]])
        return np.concatenate([quarter @ _rotation(-90 * k).T for k in range(4)])
    raise ValueError(f"unknown shape {shape!r}")


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    # Image y points down, so a counter-clockwise turn on screen negates the sine terms.
    return np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])


def coverage(scene: Scene, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage (H, W) in [0, 1] of the scene's shape."""
    n = scene.image_size * supersample
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    # PIL puts pixel centres on integer coordinates; the scene puts them at +0.5.
    cx, cy = (c * supersample - 0.5 for c in scene.center)
    r = scene.size / 2 * supersample
    if scene.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if scene.shape == "ring":
            ri = r * RING_INNER
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    else:
        points = _polygon(scene.shape, r) @ _rotation(scene.rotation).T + (cx, cy)
        draw.polygon([tuple(p) for p in points], fill=255)
    hi = np.asarray(mask, dtype=np.float32) / 255.0
    s = scene.image_size
    return hi.reshape(s, supersample, s, supersample).mean(axis=(1, 3))


def render(scene: Scene, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """The scene as a float32 RGB image (H, W, 3) in [0, 1]."""
    alpha = coverage(scene, supersample)[..., None]
    fg = np.asarray(COLOURS[scene.colour], np.float32) / 255.0
    bg = np.asarray(BACKGROUNDS[scene.background], np.float32) / 255.0
    return (bg * (1 - alpha) + fg * alpha).astype(np.float32)


def make_batch(seed: int, start: int, count: int, size: int = 32):
    """Samples ``start .. start+count-1`` of dataset ``seed``: images (N, H, W, 3) float32
    in [0, 1], their prompts and their scenes."""
    scenes = [sample_scene(seed, i, size) for i in range(start, start + count)]
    images = np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, size, size, 3), np.float32)
    return images, [prompt_for(s) for s in scenes], scenes
