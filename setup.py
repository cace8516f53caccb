"""Install the `promptdiff` library: engine, CLIP helpers, diffusion core, results, and the
trainers, datasets and tools.

The CoOp layout stays: trainers/, datasets/ and tools/ live at the top of the repository and are
installed as `promptdiff.trainers`, `promptdiff.datasets` and `promptdiff.tools`, the one name each
is imported by everywhere, so every tool runs from any folder (a top-level `datasets` package would
shadow the Hugging Face library of that name).
"""

from setuptools import find_packages, setup

# top-level folder -> the package it is installed as
MAPPED = {
    "trainers": "promptdiff.trainers",
    "datasets": "promptdiff.datasets",
    "tools": "promptdiff.tools",
}


def read_version() -> str:
    """promptdiff/_version.py's __version__, read without importing the package."""
    scope: dict = {}
    with open("promptdiff/_version.py") as f:
        exec(f.read(), scope)
    return scope["__version__"]


def read_requirements() -> list[str]:
    with open("requirements.txt") as f:
        lines = [line.split("#")[0].strip() for line in f]
    dev = ("pytest", "ruff")
    return [line for line in lines if line and not line.startswith(dev)]


def packages() -> list[str]:
    found = find_packages(include=["promptdiff", "promptdiff.*"])
    for folder, package in MAPPED.items():
        found += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]
    return found


setup(
    name="promptdiff",
    version=read_version(),
    description="Prompt diffusion for CLIP prompt learning (CoOp, CoCoOp, VPT, MaPLe) on a "
    "Dassl-compatible engine",
    packages=packages(),
    package_dir={package: folder for folder, package in MAPPED.items()},
    python_requires=">=3.10",
    install_requires=read_requirements(),
)
