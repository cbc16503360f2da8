"""A client the project did not write: stubs grpc_tools.protoc made from proto/*.proto, and grpcio's own health
and reflection stubs, calling every RPC of a worker with one kind of deadline.

    python client.py ADDRESS none|long|short JPEG

Run with the generated modules on PYTHONPATH and nothing of the project importable (tests/worker/test_conformance.py
does). The image calls all start at once, so on a fresh worker each arrives before the face model has loaded.
Prints one JSON object: each RPC's status code name and, when OK, what its answer says.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import abimage_pb2
import abimage_pb2_grpc
import grpc
import imageworker_v1_pb2 as v1
import imageworker_v1_pb2_grpc as v1_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

TIMEOUTS = {"none": None, "long": 1e9, "short": 0.05}
CHUNK = 64 * 1024


def main() -> None:
    address, kind, path = sys.argv[1:]
    timeout = TIMEOUTS[kind]
    image = open(path, "rb").read()
    channel = grpc.insecure_channel(address)
    worker = v1_grpc.ImageWorkerStub(channel)
    legacy = abimage_pb2_grpc.ABImageServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    def rotate_stream(auto: bool):
        def chunks():
            yield v1.RotateChunk(request=v1.RotateRequest(degrees=0 if auto else 90, auto=auto), size=len(image))
            for start in range(0, len(image), CHUNK):
                yield v1.RotateChunk(data=image[start:start + CHUNK])

        answer, data = None, b""
        for chunk in worker.RotateStream(chunks(), timeout=timeout):
            if chunk.HasField("response"):
                answer = chunk.response
            else:
                data += chunk.data
        return {"width": answer.width, "height": answer.height, "decided_by": answer.decided_by,
                "bytes": len(data)}

    def classify_stream():
        def chunks():
            yield v1.ClassifyChunk(request=v1.ClassifyRequest(), size=len(image))
            for start in range(0, len(image), CHUNK):
                yield v1.ClassifyChunk(data=image[start:start + CHUNK])

        return {"label": worker.ClassifyStream(chunks(), timeout=timeout).label}

    def rotated(reply):
        return {"width": reply.width, "height": reply.height, "decided_by": reply.decided_by,
                "bytes": len(reply.image)}

    def batch(call, request):
        """Each item's answer (its summary) or its error's ErrorInfo reason."""
        info = error_details_pb2.ErrorInfo()
        items = []
        for result in call(request, timeout=timeout).results:
            if result.HasField("error"):
                items.append({"reason": next(info.reason for d in result.error.details if d.Unpack(info))})
            elif isinstance(result.response, v1.RotateResponse):
                items.append(rotated(result.response))
            else:
                items.append({"label": result.response.label})
        return {"items": items}

    grey = abimage_pb2.ABImage(color=False, data=bytes(range(6)), width=3, height=2)
    calls = {
        "Rotate": lambda: rotated(worker.Rotate(v1.RotateRequest(image=image, degrees=90), timeout=timeout)),
        "Rotate auto": lambda: rotated(worker.Rotate(v1.RotateRequest(image=image, auto=True), timeout=timeout)),
        "Classify": lambda: {"label": worker.Classify(v1.ClassifyRequest(image=image), timeout=timeout).label},
        "RotateStream": lambda: rotate_stream(auto=False),
        "RotateStream auto": lambda: rotate_stream(auto=True),
        "ClassifyStream": classify_stream,
        "RotateBatch": lambda: batch(worker.RotateBatch, v1.RotateBatchRequest(items=[
            v1.RotateRequest(image=image, degrees=90), v1.RotateRequest(image=b"not an image")])),
        "ClassifyBatch": lambda: batch(worker.ClassifyBatch, v1.ClassifyBatchRequest(items=[
            v1.ClassifyRequest(image=image), v1.ClassifyRequest(image=b"")])),
        "RotateImage": lambda: (lambda r: {"width": r.width, "height": r.height, "data": list(r.data)})(
            legacy.RotateImage(abimage_pb2.ABImageRotateRequest(rotation=1, image=grey), timeout=timeout)),
        "RecognizeFace": lambda: {"classification": legacy.RecognizeFace(
            abimage_pb2.ABCustomImageEndpointRequest(image=grey), timeout=timeout).classification},
    }

    def outcome(call):
        try:
            return {"code": "OK", **call()}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details()}

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(outcome, call) for name, call in calls.items()}
        results = {name: f.result() for name, f in futures.items()}

    def check():
        reply = health.Check(health_pb2.HealthCheckRequest(service="imageworker.v1.ImageWorker"), timeout=timeout)
        return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}

    def watch():
        stream = health.Watch(health_pb2.HealthCheckRequest(), timeout=timeout)
        statuses = []
        for reply in stream:  # never ends by itself: the first status is enough, or the deadline ends it
            statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            if timeout is None or timeout > 1:
                stream.cancel()
                break
        return {"statuses": statuses}

    def reflect():
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names = []
        for reply in reflection.ServerReflectionInfo(iter([request]), timeout=timeout):
            names += [s.name for s in reply.list_services_response.service]
        return {"services": sorted(names)}

    for name, call in (("Check", check), ("Watch", watch), ("ServerReflectionInfo", reflect)):
        results[name] = outcome(call)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
