"""imagebatch's driver: run a CSV manifest of images through one or more workers."""

__version__ = "0.1.0"
