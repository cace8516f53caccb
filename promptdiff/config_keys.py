"""Config keys declared by their readers: each trainer module (and the text encoder's settings)
registers its namespace's defaults with `declare_keys`, and `extend_cfg` adds them all to a default
config. The library never imports trainers/ to learn their keys; importing them registers them.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

# dotted namespace ("TRAINER.COOP") -> its defaults, in declaration order
_DECLARED: dict[str, CN] = {}
# dotted namespace -> its keys marked test-time
_TEST_TIME: dict[str, tuple[str, ...]] = {}


def declare_keys(namespace: str, test_time: tuple[str, ...] = (), **defaults) -> None:
    """Register the keys of `namespace` (e.g. "TRAINER.COOP") with their default values.

    `test_time` names those of its keys that never change what is trained (how a trained model is
    evaluated, or an exact speed/memory setting): run identity (engine/runinfo.py) leaves them
    out, so a model may be evaluated, or a run resumed, with other values.
    """
    unknown = [key for key in test_time if key not in defaults]
    if unknown:
        raise ValueError(
            f"Config namespace {namespace} marks {', '.join(unknown)} test-time but does not "
            "declare it; add its default or drop it from test_time."
        )
    node = CN(defaults)
    if namespace in _DECLARED and (
        _DECLARED[namespace] != node or _TEST_TIME[namespace] != tuple(test_time)
    ):
        raise ValueError(f"Config namespace {namespace} is declared twice with other defaults.")
    _DECLARED[namespace] = node
    _TEST_TIME[namespace] = tuple(test_time)


def declared_namespaces() -> list[str]:
    """The namespaces registered so far (import trainers to register theirs)."""
    return list(_DECLARED)


def test_time_keys() -> list[str]:
    """The dotted names of every declared key marked test-time ("TRAINER.PD.STEPS", ...)."""
    return [f"{ns}.{key}" for ns, keys in _TEST_TIME.items() for key in keys]


def add_missing_defaults(cfg: CN, defaults: CN) -> None:
    """Copy into cfg every key of `defaults` it lacks (recursively); existing keys are kept."""
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = value.clone() if isinstance(value, CN) else value
        elif isinstance(value, CN) and isinstance(cfg[key], CN):
            add_missing_defaults(cfg[key], value)


def extend_cfg(cfg: CN) -> CN:
    """Add every declared key to a default config (train.py does this before merging files).

    A real Dassl's defaults lack the project's own keys (MODEL.BACKBONE.PATH, DATASET.LIST_ORDER;
    DATASET.SUBSAMPLE_CLASSES, which upstream CoOp adds itself): they come from the built-in ones.
    Each declared namespace replaces whatever the defaults held under its name.
    """
    from promptdiff.engine.config import get_cfg_default

    add_missing_defaults(cfg, get_cfg_default())
    for namespace, defaults in _DECLARED.items():
        *parents, leaf = namespace.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                node[part] = CN()
            node = node[part]
        node[leaf] = defaults.clone()
    return cfg
