"""The CoOp-family datasets, registered by class name; import this package to register them all."""

import importlib
import pkgutil

from promptdiff.checkout import check_same_checkout

check_same_checkout(__file__)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "common":
        importlib.import_module(f"{__name__}.{_mod.name}")
