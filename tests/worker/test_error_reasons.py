"""Error kinds travel as data: every worker refusal carries a google.rpc.ErrorInfo reason, and the driver's
retry policy (batch.runner) reads that reason, never the message text."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from PIL import Image

from batch.retry import busy, error_reason, explain_permanent, permanent
from tests.support.hostile import gif_frame_bomb, png_bomb
from tests.support.images import jpeg
from tests.support.inprocess import StandInClassifier, in_process_worker
from tests.support.processes import BIG_MESSAGES
from worker import decode
from worker.api import abimage_pb2 as ab
from worker.api import abimage_pb2_grpc as ab_grpc
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.errors import InvalidArgument, Reason

RE = grpc.StatusCode.RESOURCE_EXHAUSTED
DETAILS_KEY = "grpc-status-details-bin"


def wire_error(code: grpc.StatusCode, message: str, *details: Message) -> grpc.aio.AioRpcError:
    """The error a grpc.aio client raises for a status with these details, as gRPC's rich error model sends it."""
    rich = status_pb2.Status(code=code.value[0], message=message)
    for d in details:
        rich.details.add().Pack(d)
    trailing = grpc.aio.Metadata(*rpc_status.to_status(rich).trailing_metadata) if details else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def info(reason: str, domain: str = "imageworker.v1") -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain)


# --- the reasons and the driver's policy (no server) --------------------------------------------------------


def test_the_worker_sends_exactly_the_reasons_the_proto_documents():
    documented = set(v1.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    assert {r.value for r in Reason} == documented


SMALL, HUGE = 2**20, 17 * 2**20  # request sizes: under, and possibly over, a worker's transport limit


@pytest.mark.parametrize("code, reason, is_permanent, is_busy", [
    (RE, "WORKER_BUSY", False, True),
    (RE, "IMAGE_TOO_LARGE", True, False),
    (grpc.StatusCode.INVALID_ARGUMENT, "PIXEL_LIMIT", True, False),
    (grpc.StatusCode.INVALID_ARGUMENT, "CORRUPT_IMAGE", True, False),
    (grpc.StatusCode.UNAVAILABLE, "MODEL_LOADING", False, False),
    (grpc.StatusCode.UNAVAILABLE, None, False, False),  # connecting, draining
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, False, False),
    (grpc.StatusCode.INTERNAL, "INTERNAL", True, False),
])
def test_policy_follows_the_reason(code, reason, is_permanent, is_busy):
    error = wire_error(code, "any wording at all", *([info(reason)] if reason else []))
    assert error_reason(error) == reason
    for size in (SMALL, HUGE):
        assert (permanent(error, size), busy(error, size)) == (is_permanent, is_busy)


def test_grpcs_own_refusal_is_its_size_limit_for_a_huge_request_else_its_concurrency_cap():
    """No ErrorInfo: over 16 MiB it may be the transport limit (never retried), under it only the cap (busy)."""
    error = wire_error(RE, "no reason")
    assert (permanent(error, HUGE), busy(error, HUGE)) == (True, False)
    assert (permanent(error, SMALL), busy(error, SMALL)) == (False, True)


def test_rewording_a_message_changes_nothing_and_text_alone_decides_nothing():
    assert busy(wire_error(RE, "larger than max --max-message-mb", info("WORKER_BUSY")), HUGE)
    assert permanent(wire_error(RE, "worker busy: retry after a backoff", info("IMAGE_TOO_LARGE")), SMALL)
    assert busy(wire_error(RE, "Received message larger than max (1 vs. 0)"), SMALL)


def test_only_the_workers_domain_counts_and_broken_details_mean_no_reason():
    assert error_reason(wire_error(RE, "busy", info("WORKER_BUSY", domain="example.com"))) is None
    garbled = grpc.aio.Metadata((DETAILS_KEY, b"\xff not a status"))
    assert error_reason(grpc.aio.AioRpcError(RE, grpc.aio.Metadata(), garbled, details="x")) is None
    other_message = wire_error(RE, "one message", info("WORKER_BUSY"))
    contradicted = grpc.aio.AioRpcError(RE, grpc.aio.Metadata(), other_message.trailing_metadata(), details="another")
    assert error_reason(contradicted) is None


def test_a_transport_refusal_is_explained_with_the_flag_that_raises_the_limit():
    error = wire_error(RE, "Received message larger than max (20971527 vs. 17825792)")
    assert "--max-message-mb" in explain_permanent(error, 20 * 2**20)
    assert explain_permanent(wire_error(RE, "image is 3.0 MiB", info("IMAGE_TOO_LARGE")), 0) == (
        "RESOURCE_EXHAUSTED: image is 3.0 MiB")


def test_one_class_several_reasons_the_raise_site_chooses():
    assert InvalidArgument("x").reason == Reason.CORRUPT_IMAGE
    assert InvalidArgument("x", Reason.EMPTY_IMAGE).reason == Reason.EMPTY_IMAGE
    assert InvalidArgument.reason == Reason.CORRUPT_IMAGE  # the override is the instance's only


# --- Pillow's bomb guard -------------------------------------------------------------------------------------


def test_importing_the_worker_leaves_pillows_bomb_guard_on():
    code = "import worker.rotation, worker.service; from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() != "None"


def test_a_bomb_refused_by_pillows_guard_is_a_pixel_limit_too():
    assert Image.MAX_IMAGE_PIXELS is not None  # this process kept Pillow's guard
    with pytest.raises(InvalidArgument) as e:
        decode.open_image(png_bomb(), max_pixels=10**12)
    assert e.value.reason == Reason.PIXEL_LIMIT


# --- the worker's real servicers over real gRPC (in this process) --------------------------------------------

SMALL_WORKER = {"threads": 1, "max_concurrent_rpcs": 1, "max_message_mb": 2, "max_pixels": 30_000_000}


@pytest.fixture(scope="module")
def small_worker():
    """One image call at a time, 2 MiB messages (transport cap 18 MiB), 30 MP."""
    with in_process_worker(**SMALL_WORKER) as w:
        yield w


def refusal(address: str, call: str, request: Message, *, stub=v1_grpc.ImageWorkerStub) -> grpc.aio.AioRpcError:
    """The AioRpcError a grpc.aio client (like the driver) gets for this call."""

    async def go() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(address, options=BIG_MESSAGES) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await getattr(stub(ch), call)(request, timeout=60)
            return e.value

    return asyncio.run(go())


@pytest.mark.parametrize("call, request_, code, reason", [
    ("Rotate", v1.RotateRequest(image=jpeg(16, 16), degrees=45), "INVALID_ARGUMENT", "INVALID_ROTATION"),
    ("Rotate", v1.RotateRequest(image=jpeg(64, 64)[:300], degrees=90), "INVALID_ARGUMENT", "CORRUPT_IMAGE"),
    ("Classify", v1.ClassifyRequest(image=b"<html>not an image</html>"), "INVALID_ARGUMENT", "UNSUPPORTED_FORMAT"),
    ("Classify", v1.ClassifyRequest(image=b""), "INVALID_ARGUMENT", "EMPTY_IMAGE"),
    ("Rotate", v1.RotateRequest(image=png_bomb(), degrees=90), "INVALID_ARGUMENT", "PIXEL_LIMIT"),
    ("Rotate", v1.RotateRequest(image=gif_frame_bomb(), degrees=90), "INVALID_ARGUMENT", "PIXEL_LIMIT"),
    ("Rotate", v1.RotateRequest(image=b"\xff\xd8" + bytes(3 * 2**20), degrees=90), "RESOURCE_EXHAUSTED",
     "IMAGE_TOO_LARGE"),
], ids=["rotation", "corrupt", "html", "empty", "pixel-bomb", "frame-bomb", "too-large"])
def test_each_refusal_carries_its_reason_and_the_driver_never_retries_it(small_worker, call, request_, code, reason):
    error = refusal(small_worker.address, call, request_)
    assert (error.code().name, error_reason(error)) == (code, reason), error.details()
    assert permanent(error, len(request_.image))


@pytest.mark.parametrize("call, request_, reason", [
    ("RotateImage", ab.ABImageRotateRequest(rotation=7, image=ab.ABImage(data=bytes(4), width=2, height=2)),
     "INVALID_ROTATION"),
    ("RecognizeFace", ab.ABCustomImageEndpointRequest(image=ab.ABImage(data=bytes(3), width=2, height=2)),
     "INVALID_PIXELS"),
], ids=["rotation", "pixels"])
def test_the_legacy_service_sends_reasons_too(small_worker, call, request_, reason):
    error = refusal(small_worker.address, call, request_, stub=ab_grpc.ABImageServiceStub)
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, reason), error.details()


def test_a_message_over_grpcs_own_limit_has_no_reason_and_stays_permanent(small_worker):
    error = refusal(small_worker.address, "Rotate", v1.RotateRequest(image=bytes(20 * 2**20), degrees=90))
    assert error.code() == RE and error_reason(error) is None, error.details()
    assert permanent(error, 20 * 2**20) and not busy(error, 20 * 2**20)
    assert "--max-message-mb" in explain_permanent(error, 20 * 2**20)


def test_a_busy_worker_says_so_with_a_retry_delay_and_the_driver_retries_soon():
    gate = threading.Event()  # the first call holds the worker's one slot until the others are answered
    request = v1.ClassifyRequest(image=jpeg(64, 64))

    async def go() -> list[grpc.aio.AioRpcError]:
        async with grpc.aio.insecure_channel(held.address, options=BIG_MESSAGES) as ch:
            stub = v1_grpc.ImageWorkerStub(ch)
            first = asyncio.ensure_future(stub.Classify(request, timeout=60))
            while held.state.admission.admitted == 0:
                await asyncio.sleep(0.01)
            answers = await asyncio.gather(*(stub.Classify(request, timeout=60) for _ in range(5)),
                                           return_exceptions=True)
            gate.set()
            assert (await first).label == "face"
        return answers

    with in_process_worker(StandInClassifier(gate), **SMALL_WORKER) as held:
        refused = asyncio.run(go())
    assert all(isinstance(a, grpc.aio.AioRpcError) for a in refused), "a worker taking one call refuses the rest"
    for error in refused:
        assert (error.code(), error_reason(error)) == (RE, "WORKER_BUSY"), error.details()
        assert busy(error, len(request.image)) and not permanent(error, len(request.image))
    rich = rpc_status.from_call(refused[0])
    assert rich.code == code_pb2.RESOURCE_EXHAUSTED
    delays = [d for d in rich.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(delays) == 1
    retry = error_details_pb2.RetryInfo()
    delays[0].Unpack(retry)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 1
