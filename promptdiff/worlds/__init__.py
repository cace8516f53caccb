"""The synthetic worlds: data the project generates itself, so that everything runs without a
download. Apart from the core (diffusion, backbone) and the runtime (engine, results): a world may
use both, and only the datasets, the tools and the tests use a world.

- `miniature`: the miniature world, a procedural 40-class image-text world with shifted domains
  and a tiny CLIP pre-trained on it, in which prompt learning and prompt diffusion can be measured
  (read as datasets by datasets/miniworld.py; built, checked and run by `python tools/miniworld.py`);
- `shapes_caltech`: a few coloured shapes written in Caltech101's folder layout, the fast fixture
  of the end-to-end tests and of tools/benchmark.py (read by the real Caltech101 dataset class).
"""
