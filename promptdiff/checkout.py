"""Which copy of the project is imported: promptdiff.trainers, .datasets and .tools must come from
the same checkout (or installed wheel) as promptdiff itself."""

from __future__ import annotations

import os


def check_same_checkout(package_file: str) -> None:
    """Refuse promptdiff.trainers / datasets / tools (given one's __init__ file) from another copy
    of the project than promptdiff itself: an editable install of one checkout, imported from
    another checkout's folder, would otherwise run the two copies' code together, silently."""
    folder = os.path.dirname(os.path.realpath(package_file))
    package = os.path.dirname(os.path.realpath(__file__))
    # installed: promptdiff/trainers; a source checkout: trainers/ beside promptdiff/
    if os.path.dirname(folder) not in (package, os.path.dirname(package)):
        name = os.path.basename(folder)
        raise ImportError(
            f"promptdiff comes from {package} but promptdiff.{name} from {folder}: two copies of the "
            f"project are mixed; run from the checkout that is installed, or install the one you "
            f"run (pip install -e . there)."
        )
