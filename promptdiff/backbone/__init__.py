"""CLIP helpers: loading weights, precision, and running CLIP's transformers with prompts."""

from promptdiff.backbone.loader import (
    PRECISIONS,
    WeightsError,
    cast_for_precision,
    check_input_size,
    load_clip,
    read_state_dict,
    resolve_weights,
    save_tiny_clip,
    tiny_clip,
)

__all__ = [
    "PRECISIONS",
    "WeightsError",
    "cast_for_precision",
    "check_input_size",
    "load_clip",
    "read_state_dict",
    "resolve_weights",
    "save_tiny_clip",
    "tiny_clip",
]
