"""Streaming against unary calls: per-call cost by image size, and memory against image size.

1. Per-call cost: one `worker serve --processes 1`; for each size, sequential
   calls on a file of that size (a small JPEG padded to it, turned by 0
   degrees: the worker only parses the header and answers the same bytes, so
   what is measured is carrying the image both ways), each as the driver makes
   it: unary (read the file, Rotate, write the output atomically) and streamed
   (batch.stream.rotate: file to worker to file in 1 MiB chunks). Median wall
   time and the client's CPU per call.
2. Memory: `batch run --worker ADDRESS` (default settings) on one image at a
   time, rotated 90 degrees: uncompressed RGB TIFFs of growing size, and a
   100 MP PNG and JPEG; peak RSS of the driver and of the (one-process) worker,
   each started fresh.

    python bench/bench_streaming.py [--calls 20] [--skip-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from common import TreeSampler, batch_run, mib, print_header, table, write_manifest
from PIL import Image
from servers import running, worker_cmd

from batch import stream
from batch.durable import atomic_file
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc

# 2 and 4 MB locate the crossover (batch.stream.STREAM_MIN).
SIZES = {"64 KB": 64_000, "1 MB": 10**6, "2 MB": 2 * 10**6, "4 MB": 4 * 10**6, "8 MB": 8 * 10**6,
         "64 MB": 64 * 10**6}
BIG = [("grpc.max_receive_message_length", 256 * 2**20), ("grpc.max_send_message_length", 256 * 2**20)]


def padded_jpeg(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue() + bytes(size - buf.tell())  # bytes after EOI: carried, never decoded


async def per_call(address: str, path: Path, out: Path, calls: int) -> dict[str, tuple[float, float]]:
    """{"unary"|"stream": (median ms, client CPU ms per call)}."""
    size = path.stat().st_size
    request = v1.RotateRequest(degrees=0)
    async with grpc.aio.insecure_channel(address, options=BIG) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)

        async def unary() -> None:
            reply = await stub.Rotate(v1.RotateRequest(image=path.read_bytes(), degrees=0), timeout=120)
            with atomic_file(out, durable=False) as f:
                f.write(reply.image)

        async def streamed() -> None:
            await stream.rotate(stub, request, path, size, out, "/", 120)

        result = {}
        for name, call in (("unary", unary), ("stream", streamed)):
            await call()  # warm: connection, page cache
            walls = []
            cpu = time.process_time()
            for _ in range(calls):
                start = time.perf_counter()
                await call()
                walls.append((time.perf_counter() - start) * 1000)
            result[name] = (statistics.median(walls), (time.process_time() - cpu) * 1000 / calls)
        return result


def cost_table(calls: int) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, running(worker_cmd("--processes", "1")) as (address, _):
        for label, size in SIZES.items():
            path = Path(tmp) / "in.jpg"
            path.write_bytes(padded_jpeg(size))
            n = max(5, calls * 2**20 // size) if size > 2**20 else calls
            r = asyncio.run(per_call(address, path, Path(tmp) / "out.jpg", n))
            (uw, uc), (sw, sc) = r["unary"], r["stream"]
            rows.append((label, n, f"{uw:.2f}", f"{sw:.2f}", f"{sw / uw:.2f}", f"{uc:.2f}", f"{sc:.2f}"))
    return table(["image", "calls", "unary ms", "stream ms", "stream/unary", "unary client CPU ms",
                  "stream client CPU ms"], rows)


def images(tmp: Path) -> list[tuple[str, Path]]:
    made = []
    for side in (3000, 6000, 10000):
        path = tmp / f"scan{side}.tiff"
        rgb = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(path, compression=None)
        made.append((f"TIFF {side}x{side} RGB raw", path))
        del rgb
        gc.collect()
    x = np.arange(10000, dtype=np.uint16)
    rgb = np.empty((10000, 10000, 3), dtype=np.uint8)
    rgb[..., 0] = (x[None, :] // 40).astype(np.uint8)
    rgb[..., 1] = (x[:, None] // 40).astype(np.uint8)
    rgb[..., 2] = 128
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
        path = tmp / f"photo.{suffix}"
        Image.fromarray(rgb).save(path, fmt)
        made.append((f"{fmt} 10000x10000 RGB", path))
    del rgb
    gc.collect()
    return made


def memory_table() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in images(Path(tmp)):
            manifest = Path(tmp) / "m.csv"
            write_manifest(manifest, [{"id": "a", "path": str(path), "op": "rotate", "rotation": "90"}])
            with running(worker_cmd("--processes", "1")) as (address, proc), TreeSampler(proc.pid) as worker:
                run = batch_run(manifest, Path(tmp) / f"out-{path.stem}", "--worker", address)
            if run.returncode != 0:
                sys.exit(f"{label}: batch run failed:\n{run.stdout}\n{run.stderr}")
            peak = worker.procs[proc.pid]
            rows.append((label, f"{mib(path.stat().st_size):.0f}", f"{run.wall:.1f}", f"{mib(run.driver_peak()):.0f}",
                         f"{mib(peak.baseline_rss):.0f}", f"{mib(peak.peak_rss):.0f}",
                         f"{mib(peak.peak_rss - peak.baseline_rss):.0f}"))
    return table(["image", "file MiB", "wall s", "driver peak RSS MiB", "worker idle MiB", "worker peak MiB",
                  "worker growth MiB"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20, help="calls per size up to 1 MB (fewer above)")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    print_header("Streaming against unary calls", sys.argv)
    print("### Per-call cost\n\n" + cost_table(args.calls))
    if not args.skip_memory:
        print("\n### Memory against image size\n\n" + memory_table())


if __name__ == "__main__":
    main()
