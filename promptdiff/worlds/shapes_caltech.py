"""A small built-in image dataset in Caltech101's layout, for the end-to-end tests and
tools/benchmark.py (the demo runs on the miniature world).

Each class is a coloured shape on a noisy background, so a tiny CLIP can tell classes apart.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 220, 40),
    "purple": (150, 50, 200),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")


def class_names(n_classes: int) -> list[str]:
    """Folder names red_circle, green_circle, ...; past the 24 colour-shape pairs they repeat
    with a number (red_circle_2, ...), so any class count has distinct names."""
    names = [f"{c}_{s}" for s in SHAPES for c in COLOURS]
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1 (got {n_classes}).")
    return [
        names[i % len(names)] + (f"_{i // len(names) + 1}" if i >= len(names) else "")
        for i in range(n_classes)
    ]


def _draw(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    colour, shape = name.split("_")[:2]
    background = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.22, 0.36)
    cx, cy = rng.uniform(r, size - r, size=2)
    fill = tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in COLOURS[colour])
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    return img


def make_shapes_caltech(
    root: str, n_classes: int = 8, n_per_class: int = 20, size: int = 32, seed: int = 0
) -> str:
    """Write root/caltech-101/101_ObjectCategories/<class>/<i>.png (plus an ignored
    BACKGROUND_Google folder, as in the real dataset); returns root."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "caltech-101", "101_ObjectCategories")
    for name in [*class_names(n_classes), "BACKGROUND_Google"]:
        folder = os.path.join(image_dir, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(n_per_class if name != "BACKGROUND_Google" else 3):
            path = os.path.join(folder, f"image_{i:04d}.png")
            if not os.path.exists(path):
                shape_name = name if name != "BACKGROUND_Google" else "red_circle"
                _draw(shape_name, size, rng).save(path)
    return root
