"""Benchmarks of the pack, run through a real ComfyUI server (see guidance_benchmark.py)."""
