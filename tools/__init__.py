"""The command-line tools, importable as promptdiff.tools."""

from promptdiff.checkout import check_same_checkout

check_same_checkout(__file__)
