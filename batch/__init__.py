"""imagebatch's driver: run a CSV manifest of images through one or more workers."""
