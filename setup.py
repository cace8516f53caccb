"""Install the `promptdiff` library (engine, CLIP helpers, diffusion core).

trainers/, datasets/, configs/ and scripts/ stay in the repository and are used from its root,
as in CoOp (a top-level `datasets` package would shadow the Hugging Face library of that name).
"""

from setuptools import find_packages, setup


def read_requirements() -> list[str]:
    with open("requirements.txt") as f:
        lines = [line.split("#")[0].strip() for line in f]
    dev = ("pytest", "ruff")
    return [line for line in lines if line and not line.startswith(dev)]


setup(
    name="promptdiff",
    version="0.1.0",
    description="Prompt diffusion for CLIP prompt learning (CoOp, CoCoOp, VPT, MaPLe) on a "
    "Dassl-compatible engine",
    packages=find_packages(include=["promptdiff", "promptdiff.*"]),
    python_requires=">=3.10",
    install_requires=read_requirements(),
)
