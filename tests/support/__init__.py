"""The test suite's one support layer: processes, images, manifests, results, certificates.

Tests import from here (``from tests.support.processes import worker_process``), never from conftest.
"""
