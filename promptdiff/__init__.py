"""Prompt diffusion for CLIP prompt learning (arXiv 2410.20164) on a Dassl-compatible engine."""

from promptdiff._version import __version__

__all__ = ["__version__", "load"]


def load(run_dir: str, epoch: int | None = None):
    """A trained run as a Predictor: `promptdiff.load(run).predict(images, classnames)` gives
    class probabilities (see promptdiff/predict.py)."""
    from promptdiff.predict import load as _load

    return _load(run_dir, epoch)
