"""The shipped face model behind the worker's real servicers on loopback (in this process: loading the model is
this module's cost, a worker process would add its start): Classify and the legacy RecognizeFace."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.support.faces import BUSH, CLOCKWISE, POWELL, SAMPLES, held_out_photo, lfw_root, needs_lfw
from tests.support.inprocess import in_process_worker
from tests.support.processes import BIG_MESSAGES
from worker.api import abimage_pb2, abimage_pb2_grpc, imageworker_v1_pb2, imageworker_v1_pb2_grpc
from worker.faces import artifact, load_classifier
from worker.faces.legacy import old_client_thumbnail


@pytest.fixture(scope="module")
def channel():
    with in_process_worker(load_classifier()) as live, grpc.insecure_channel(live.address, BIG_MESSAGES) as ch:
        yield ch


def recognize(channel, pixels: np.ndarray, color: bool = False) -> str:
    image = abimage_pb2.ABImage(color=color, data=pixels.tobytes(), width=pixels.shape[1], height=pixels.shape[0])
    stub = abimage_pb2_grpc.ABImageServiceStub(channel)
    return stub.RecognizeFace(abimage_pb2.ABCustomImageEndpointRequest(image=image), timeout=60).classification


@pytest.mark.timeout(180)
def test_classify_no_face_reports_model_identity(channel):
    stub = imageworker_v1_pb2_grpc.ImageWorkerStub(channel)
    reply = stub.Classify(imageworker_v1_pb2.ClassifyRequest(image=(SAMPLES / "china.jpg").read_bytes()), timeout=60)
    assert reply.label == "no_face" and not reply.faces and reply.orientation == 0
    assert (reply.width, reply.height) == (640, 427)
    assert reply.model == "dlib-resnet-open-set"
    assert reply.model_version == artifact.load().version


@pytest.mark.timeout(180)
def test_classify_garbage_is_invalid_argument(channel):
    stub = imageworker_v1_pb2_grpc.ImageWorkerStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(imageworker_v1_pb2.ClassifyRequest(image=b"GIF89a broken"), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@needs_lfw
@pytest.mark.timeout(180)
def test_classify_and_recognize_face_name_held_out_photos(channel):
    meta = artifact.load().meta
    stub = imageworker_v1_pb2_grpc.ImageWorkerStub(channel)
    for person in (BUSH, POWELL):
        for name in meta["split"]["test_people"][person][:3]:
            path: Path = lfw_root() / name
            reply = stub.Classify(imageworker_v1_pb2.ClassifyRequest(image=path.read_bytes()), timeout=60)
            assert reply.label == person and reply.faces[0].label == person and reply.confidence >= 0.5
            assert reply.orientation == 0
            left, top, right, bottom = (reply.faces[0].box.left, reply.faces[0].box.top,
                                        reply.faces[0].box.right, reply.faces[0].box.bottom)
            assert 0 <= left < right <= 250 and 0 <= top < bottom <= 250
            with Image.open(path) as img:
                assert recognize(channel, old_client_thumbnail(img)) == person


@needs_lfw
@pytest.mark.timeout(180)
def test_classify_finds_a_photo_turned_sideways_and_boxes_the_face_as_sent(channel):
    with Image.open(held_out_photo(BUSH, 1)) as img:
        photo = img.convert("RGB").crop((0, 20, 250, 230))  # 250x210: the turn swaps width and height
    sent = photo.transpose(CLOCKWISE[90])
    buf = io.BytesIO()
    sent.save(buf, "JPEG", quality=95)  # as a camera that writes no orientation: no EXIF
    stub = imageworker_v1_pb2_grpc.ImageWorkerStub(channel)
    upright = stub.Classify(imageworker_v1_pb2.ClassifyRequest(image=_png(photo)), timeout=60)
    reply = stub.Classify(imageworker_v1_pb2.ClassifyRequest(image=buf.getvalue()), timeout=60)
    assert (reply.label, reply.orientation, reply.width, reply.height) == (BUSH, 90, 210, 250)
    # The upright photo's face box carried into the image as sent: upright (x, y) is (209 - y, x) there.
    up = upright.faces[0].box
    box = reply.faces[0].box
    expected = (210 - up.bottom, up.left, 210 - up.top, up.right)
    assert all(abs(a - b) <= 12 for a, b in zip((box.left, box.top, box.right, box.bottom), expected, strict=True))
    assert upright.orientation == 0


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.timeout(180)
def test_recognize_face_without_a_face(channel):
    flat = np.full((50, 37), 90, dtype=np.uint8)
    assert recognize(channel, flat) == "no_face"
    with Image.open(SAMPLES / "flower.jpg") as img:
        colour = np.asarray(img.convert("RGB").resize((37, 50)))
    assert recognize(channel, colour, color=True) == "no_face"
