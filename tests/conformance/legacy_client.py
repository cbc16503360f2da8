"""The seed's legacy client, as it used the ABImageService: a photo shrunk to 37x50 grey raw pixels, sent with
no deadline (gRPC's default), through stubs grpc_tools.protoc made from legacy_abimage.proto.

    python legacy_client.py ADDRESS PHOTO

Run with the generated modules on PYTHONPATH and nothing of the project importable. Both calls start at once,
so on a fresh worker RecognizeFace arrives before the face model has loaded. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import legacy_abimage_pb2 as pb
import legacy_abimage_pb2_grpc as pb_grpc
from PIL import Image


def main() -> None:
    address, path = sys.argv[1:]
    with Image.open(path) as photo:
        small = photo.convert("L").resize((37, 50))
    image = pb.ABImage(color=False, data=small.tobytes(), width=37, height=50)
    stub = pb_grpc.ABImageServiceStub(grpc.insecure_channel(address))

    def recognize():
        return {"classification": stub.RecognizeFace(pb.ABCustomImageEndpointRequest(image=image)).classification}

    def rotate():
        reply = stub.RotateImage(pb.ABImageRotateRequest(rotation=pb.ABImageRotateRequest.NINETY_DEG, image=image))
        return {"color": reply.color, "width": reply.width, "height": reply.height, "data": reply.data.hex(),
                "sent": image.data.hex()}

    def outcome(call):
        try:
            return {"code": "OK", **call()}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details()}

    with ThreadPoolExecutor(2) as pool:
        futures = {"RecognizeFace": pool.submit(outcome, recognize), "RotateImage": pool.submit(outcome, rotate)}
        print(json.dumps({name: f.result() for name, f in futures.items()}))


if __name__ == "__main__":
    main()
