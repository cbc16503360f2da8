"""`worker` command line: serve (and the face model's train/evaluate)."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="imagebatch")
def main() -> None:
    """imagebatch's gRPC image worker."""
