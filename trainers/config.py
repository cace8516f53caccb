"""The one config builder of train.py and promptdiff.load: defaults, every trainer's declared keys,
config files, flags, KEY VALUE options."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from yacs.config import CfgNode as CN

from promptdiff.config_keys import extend_cfg
from promptdiff.engine.config import merge_file, merge_opts
from promptdiff.host import get_cfg_default


def build_cfg(
    files: Sequence[str] = (),
    opts: Sequence[str] = (),
    flags: Callable[[CN], None] | None = None,
    freeze: bool = True,
) -> CN:
    """Defaults plus the keys the trainers declare, then each non-empty config file in order,
    `flags` (train.py's CLI flags), then the trailing KEY VALUE `opts`; frozen unless asked not."""
    import promptdiff.trainers  # noqa: F401  (registers the trainers and the config keys they declare)

    cfg = extend_cfg(get_cfg_default())
    for path in files:
        if path:
            merge_file(cfg, path)
    if flags is not None:
        flags(cfg)
    merge_opts(cfg, list(opts))
    if freeze:
        cfg.freeze()
    return cfg
