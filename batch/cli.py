"""`batch` command line: run a manifest, report on its results."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="imagebatch")
def main() -> None:
    """Run a CSV manifest of images through imagebatch workers."""
