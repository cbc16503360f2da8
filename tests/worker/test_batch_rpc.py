"""RotateBatch and ClassifyBatch on the real servicers in-process: each item answered or failed exactly as its
unary call, one bad item never failing the others; the batch's limits, admission, deadline and cancellation."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status
from PIL import Image

from tests.support.images import decode, encode, jpeg
from tests.support.inprocess import StandInClassifier, in_process_worker
from tests.support.rpc import reason
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc


def stub(address: str) -> tuple[grpc.Channel, v1_grpc.ImageWorkerStub]:
    channel = grpc.insecure_channel(address)
    return channel, v1_grpc.ImageWorkerStub(channel)


def item_reason(status) -> str:
    info = error_details_pb2.ErrorInfo()
    return next(info.reason for d in status.details if d.Unpack(info))


def unary_status(call, request):
    """The google.rpc.Status a unary call with ``request`` fails with (None when it is answered)."""
    try:
        call(request, timeout=30)
    except grpc.RpcError as e:
        return rpc_status.from_call(e)
    return None


MIXED = [
    v1.RotateRequest(image=jpeg(64, 48), degrees=90),
    v1.RotateRequest(image=b"not an image at all"),
    v1.RotateRequest(image=b""),
    v1.RotateRequest(image=jpeg(32, 32, seed=1), degrees=45),
    v1.RotateRequest(image=jpeg(40, 20, seed=2), degrees=270, format="PNG"),
    v1.RotateRequest(image=jpeg(16, 16), format="XYZ"),
]


def test_each_item_of_a_rotate_batch_is_what_its_unary_call_is():
    with in_process_worker() as w:
        channel, worker = stub(w.address)
        with channel:
            answer = worker.RotateBatch(v1.RotateBatchRequest(items=MIXED))  # no deadline, gRPC's default
            assert len(answer.results) == len(MIXED)
            for request, result in zip(MIXED, answer.results, strict=True):
                expected = unary_status(worker.Rotate, request)
                if expected is None:
                    assert result.WhichOneof("outcome") == "response"
                    single = worker.Rotate(request, timeout=30)
                    got = result.response
                    assert (got.width, got.height, got.format, got.output_sha256) == (
                        single.width, single.height, single.format, single.output_sha256)
                    assert decode(got.image).size == (got.width, got.height)
                else:  # code, message and details (ErrorInfo) all the same
                    assert result.WhichOneof("outcome") == "error"
                    assert result.error == expected
    reasons = [item_reason(r.error) if r.HasField("error") else "" for r in answer.results]
    assert reasons == ["", "UNSUPPORTED_FORMAT", "EMPTY_IMAGE", "INVALID_ROTATION", "", "INVALID_FORMAT"]
    assert (answer.results[4].response.format, answer.results[4].response.width) == ("PNG", 20)
    # Failed calls are not counted as served; a batch's answered items count as their unary calls.
    assert w.state.served == {"Rotate": 2 * 2 + 2, "RotateBatch": 1}


def test_a_classify_batch_answers_good_items_beside_bad_ones():
    items = [v1.ClassifyRequest(image=jpeg(64, 64)), v1.ClassifyRequest(image=b"\xff\xd8\xff" + b"\0" * 40),
             v1.ClassifyRequest(image=jpeg(16, 16))]
    with in_process_worker() as w, grpc.insecure_channel(w.address) as channel:
        worker = v1_grpc.ImageWorkerStub(channel)
        answer = worker.ClassifyBatch(v1.ClassifyBatchRequest(items=items))
        expected = unary_status(worker.Classify, items[1])
    first, bad, small = answer.results
    assert (first.response.label, first.response.width, len(first.response.faces)) == ("face", 64, 1)
    assert bad.error == expected and item_reason(bad.error) == "CORRUPT_IMAGE"
    assert small.response.label == "no_face"


def test_references_in_a_batch_each_read_and_written_or_refused(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    for k in range(3):
        (inputs / f"{k}.jpg").write_bytes(jpeg(30 + k, 20, seed=k))

    def ref(path) -> v1.ImageRef:
        return v1.ImageRef(path=str(path))

    items = [v1.RotateRequest(source=ref(inputs / "0.jpg"), destination=ref(outputs / "0.jpg"), degrees=90),
             v1.RotateRequest(source=ref(inputs / "missing.jpg"), destination=ref(outputs / "m.jpg"), degrees=90),
             v1.RotateRequest(source=ref(tmp_path / "outside.jpg"), destination=ref(outputs / "x.jpg")),
             v1.RotateRequest(source=ref(inputs / "2.jpg"), destination=ref(outputs / "2.jpg"), degrees=180)]
    (tmp_path / "outside.jpg").write_bytes(jpeg(8, 8))
    with in_process_worker(data_roots=(inputs,), output_roots=(outputs,)) as w, \
            grpc.insecure_channel(w.address) as channel:
        answer = v1_grpc.ImageWorkerStub(channel).RotateBatch(v1.RotateBatchRequest(items=items), timeout=30)
    done, missing, outside, turned = answer.results
    assert (done.response.image, done.response.width, done.response.height) == (b"", 20, 30)
    assert Image.open(outputs / "0.jpg").size == (20, 30)
    assert item_reason(missing.error) == "FILE_NOT_FOUND" and item_reason(outside.error) == "OUTSIDE_ROOTS"
    assert turned.response.output_bytes == (outputs / "2.jpg").stat().st_size
    assert sorted(p.name for p in outputs.iterdir()) == ["0.jpg", "2.jpg"]


def test_a_batch_over_the_item_limit_is_refused_whole():
    with in_process_worker(max_batch_items=3) as w, grpc.insecure_channel(w.address) as channel:
        worker = v1_grpc.ImageWorkerStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            worker.RotateBatch(v1.RotateBatchRequest(items=[v1.RotateRequest(image=jpeg(8, 8))] * 4), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(refused.value) == "BATCH_TOO_LARGE"
        assert len(worker.RotateBatch(v1.RotateBatchRequest(items=[v1.RotateRequest(image=jpeg(8, 8))] * 3),
                                      timeout=30).results) == 3
        assert w.state.admission.admitted == 0


def test_items_whose_answers_would_not_fit_one_message_are_refused_alone():
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")  # ~470 KiB, its answer as large: two fit in 1 MiB, not three
    items = [v1.RotateRequest(image=big, degrees=90)] * 3 + [v1.RotateRequest(image=jpeg(8, 8), degrees=90)]
    with in_process_worker(max_message_mb=1) as w, grpc.insecure_channel(w.address) as channel:
        answer = v1_grpc.ImageWorkerStub(channel).RotateBatch(v1.RotateBatchRequest(items=items), timeout=30)
    assert [r.WhichOneof("outcome") for r in answer.results] == ["response", "response", "error", "response"]
    assert item_reason(answer.results[2].error) == "BATCH_TOO_LARGE"
    assert answer.ByteSize() <= 2**20


class Counting(StandInClassifier):
    def __init__(self, gate: threading.Event) -> None:
        super().__init__(gate)
        self.calls = 0

    def classify(self, data: bytes, max_pixels: int):
        self.calls += 1
        return super().classify(data, max_pixels)


def test_the_batch_is_admitted_as_one_call_holding_all_its_bytes_and_a_cancel_stops_it():
    gate = threading.Event()
    model = Counting(gate)
    items = [v1.ClassifyRequest(image=jpeg(64, 64, seed=k)) for k in range(4)]
    with in_process_worker(model) as w, grpc.insecure_channel(w.address) as channel:
        call = v1_grpc.ImageWorkerStub(channel).ClassifyBatch.future(v1.ClassifyBatchRequest(items=items))
        until = time.monotonic() + 10
        while model.calls == 0 and time.monotonic() < until:
            time.sleep(0.01)
        admission = w.state.admission
        assert (admission.admitted, admission.image_bytes) == (1, sum(len(i.image) for i in items))
        call.cancel()
        time.sleep(0.2)  # the worker sees its client gone
        gate.set()
        until = time.monotonic() + 10
        while admission.admitted and time.monotonic() < until:
            time.sleep(0.01)
        assert (admission.admitted, admission.image_bytes) == (0, 0)
    assert model.calls == 1  # the items after the one at work were never started


class Slow(StandInClassifier):
    """A model that takes ``seconds`` over each image."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def classify(self, data: bytes, max_pixels: int):
        time.sleep(self.seconds)
        return super().classify(data, max_pixels)


def test_the_calls_time_covers_the_batch_and_leaves_the_rest_expired():
    items = [v1.ClassifyRequest(image=jpeg(64, 64, seed=k)) for k in range(3)]
    # The first item outlasts the call's time, whenever it starts within it.
    with in_process_worker(Slow(0.4), max_call_seconds=0.3) as w, grpc.insecure_channel(w.address) as channel:
        answer = v1_grpc.ImageWorkerStub(channel).ClassifyBatch(v1.ClassifyBatchRequest(items=items))  # no deadline
    first, *rest = answer.results
    assert first.response.label == "face"
    assert [(r.error.code, item_reason(r.error)) for r in rest] == [(grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                                                                     "CALL_EXPIRED")] * 2


def test_reflection_lists_the_batch_methods():
    with in_process_worker() as w, grpc.insecure_channel(w.address) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("imageworker.v1.ImageWorker")
        methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
        status = pool.FindMessageTypeByName("imageworker.v1.RotateResult").fields_by_name["error"].message_type
    assert methods["RotateBatch"] == ("RotateBatchRequest", "RotateBatchResponse")
    assert methods["ClassifyBatch"] == ("ClassifyBatchRequest", "ClassifyBatchResponse")
    assert status.full_name == "google.rpc.Status"
