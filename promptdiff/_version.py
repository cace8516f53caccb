"""The package's version, in a module of its own so that setup.py and the engine's run records
read it without importing the package (the engine sits below the package's front door)."""

__version__ = "0.1.0"
