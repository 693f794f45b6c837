"""The embedded default model's data: procedural scenes with prompts that describe them (numpy + PIL only)."""

from .dataset import (BACKGROUNDS, COLOURS, SHAPES, Scene, make_batch, parse_prompt, prompt_for, render,
                      sample_scene)

__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "Scene", "make_batch", "parse_prompt", "prompt_for",
           "render", "sample_scene"]
