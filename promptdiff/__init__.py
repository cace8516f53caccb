"""Prompt diffusion for CLIP prompt learning (arXiv 2410.20164) on a Dassl-compatible engine."""

__version__ = "0.1.0"
