"""The package version (its own module, so no module inside fgvc imports the package itself)."""

__version__ = "0.1.0"
