"""Fixtures, and one check before the slow layer runs; the helpers they use live in tests/support/."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.certificates import Pki, make_pki
from tests.support.images import make_corpus, make_formats
from tests.support.inprocess import InProcessWorker, in_process_worker
from tests.support.processes import BIG_MESSAGES, worker_process
from worker.local import LocalWorker

# The large-image tests hold up to 572 MB at once in the temporary folder (sampled every 0.2 s): a disk with
# less than this free fails them midway, as a row's ENOSPC, unless it is said at the start.
SLOW_LAYER_FREE = 2**30


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(item.get_closest_marker("slow") for item in session.items):
        return
    where = tempfile.gettempdir()
    if (free := shutil.disk_usage(where).free) < SLOW_LAYER_FREE:
        pytest.exit(f"the slow tests need {SLOW_LAYER_FREE / 2**30:.0f} GiB free in {where} and it has "
                    f"{free / 2**20:,.0f} MiB: free some, or set TMPDIR to a folder on a larger disk", returncode=1)


@pytest.fixture(scope="session")
def worker() -> Iterator[LocalWorker]:
    """One plaintext single-process worker shared by the tests of a session."""
    with worker_process() as w:
        yield w


@pytest.fixture
def live() -> Iterator[InProcessWorker]:
    """The real servicers in this process on 127.0.0.1:0 (tests/support/inprocess.py), fresh for each test: its
    ``state.served`` counts only that test's calls (it starts in milliseconds)."""
    with in_process_worker() as w:
        yield w


@pytest.fixture
def channel(worker: LocalWorker) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(worker.address, options=BIG_MESSAGES) as ch:
        yield ch


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's own corpus (tests.support.images.make_corpus): formats/ and a few photos, large and tiny."""
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def formats_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the corpus's formats/ folder: one 320x240 picture in every format the worker reads."""
    return make_formats(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA, server certificate for loopback and client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))
