"""Which files in a class folder are images (no torch import, so tools/check_dataset.py stays light)."""

from __future__ import annotations

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    """By extension, in any case (ImageNet's .JPEG); notes, archives and the like are not."""
    return name.lower().endswith(IMAGE_EXTENSIONS)
