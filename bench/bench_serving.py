"""The worker's serving cost per photo: one process, one call at a time, against the same rotate in-process.

Issue 20's row "worker CPU per photo <= 1.05 x the same rotate in-process"
(bench_rotate.py's part 5) with everything else taken away: one
``worker serve --processes 1``, one call in flight (no second worker process,
no driver's CPU competing for the cores), the corpus's 1920x1080 photos sent
by a plain gRPC client. Each round measures in turn, the order alternating:

- the worker by bytes (``Rotate``), by ``RotateBatch`` of 8, by reference
  (``source``/``destination`` files: it reads and writes them itself);
- the bench echo server (bench/echo_server.py) answering the same requests
  with an image of the same size and its sha256: what receiving 0.6 MB,
  hashing and sending 0.6 MB back costs on the worker's server settings, with
  no image work (the floor of serving by bytes);
- ``worker.rotation.rotate`` in a fresh process on the same bytes, with the
  worker's malloc settings (worker.memory) and with glibc's defaults.

CPU is user + system of the server's processes (/proc) per photo; context
switches from /proc/PID/task/*/status. Serving cost = worker - in-process.

    python bench/bench_serving.py [--corpus /tmp/ibcorpus] [--photos 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path

import grpc
from common import DEFAULT_CORPUS, corpus_rows, ensure_corpus, print_header, table, tree_counters, wait_for_quiet
from pool import in_process_cost
from servers import echo_cmd, running, worker_cmd

from worker.api import imageworker_v1_pb2 as pb
from worker.api import imageworker_v1_pb2_grpc as pb_grpc

BATCH = 8  # items per RotateBatch call
OPTIONS = [("grpc.max_receive_message_length", 256 * 2**20), ("grpc.max_send_message_length", 256 * 2**20)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--photos", type=int, default=60, help="distinct 1920x1080 photos per pass")
    ap.add_argument("--rounds", type=int, default=3, help="repeat each measurement; the median is reported")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    a = ap.parse_args()

    ensure_corpus(a.corpus, photos=a.photos, large=0, tiny=0)
    photos = [(path.resolve(), degrees) for path, degrees in corpus_rows(a.corpus, "photos")[: a.photos]]
    images = [(path.read_bytes(), degrees) for path, degrees in photos]
    jobs = [(str(path), degrees) for path, degrees in photos]
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Worker serving cost per photo: one process, one call at a time, against in-process")

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as out, contextlib.ExitStack() as stack:
        worker = stack.enter_context(running(worker_cmd("--processes", "1", "--data-root", str(a.corpus.resolve()),
                                                        "--output-root", out)))
        echo = stack.enter_context(running(echo_cmd("--processes", "1")))
        stubs = {name: pb_grpc.ImageWorkerStub(stack.enter_context(grpc.insecure_channel(address, options=OPTIONS)))
                 for name, (address, _) in (("worker", worker), ("echo", echo))}

        def by_bytes(stub) -> None:
            for data, degrees in images:
                stub.Rotate(pb.RotateRequest(image=data, degrees=degrees))

        def by_batch(stub) -> None:
            for start in range(0, len(images), BATCH):
                items = [pb.RotateRequest(image=data, degrees=d) for data, d in images[start:start + BATCH]]
                for result in stub.RotateBatch(pb.RotateBatchRequest(items=items)).results:
                    if result.HasField("error"):
                        raise SystemExit(f"RotateBatch item failed: {result.error}")

        def by_reference(stub) -> None:
            for i, (path, degrees) in enumerate(photos):
                stub.Rotate(pb.RotateRequest(source=pb.ImageRef(path=str(path)), degrees=degrees,
                                             destination=pb.ImageRef(path=f"{out}/{i}.jpg")))

        served = {  # line -> (server, how its calls are made)
            "worker, Rotate by bytes": (worker[1], lambda: by_bytes(stubs["worker"])),
            f"worker, RotateBatch of {BATCH} by bytes": (worker[1], lambda: by_batch(stubs["worker"])),
            "worker, Rotate by reference (reads and writes the files)": (worker[1],
                                                                         lambda: by_reference(stubs["worker"])),
            "echo server, same requests by bytes (gRPC + sha256, no image work)": (echo[1],
                                                                                   lambda: by_bytes(stubs["echo"])),
        }
        for _, send in served.values():  # warm: heaps grown, files in the page cache
            send()
        cpu: dict[str, list[float]] = {k: [] for k in (*served, "tuned", "default")}
        switches: dict[str, list[float]] = {k: [] for k in served}
        n = len(images)
        for rnd in range(a.rounds):
            order = list(served) if rnd % 2 == 0 else list(reversed(served))
            for name in order:
                server, send = served[name]
                before = tree_counters(server.pid)
                send()
                after = tree_counters(server.pid)
                cpu[name].append((after.cpu - before.cpu) / n * 1000)
                switches[name].append((after.switches - before.switches) / n)
            for key, tuned in (("tuned", True), ("default", False)):
                cpu[key].append(in_process_cost(jobs, tuned)[0])

    tuned = cpu["tuned"]
    med = {k: statistics.median(v) for k, v in cpu.items()}
    rows = []
    for name, values in cpu.items():
        ratios = [v / t for v, t in zip(values, tuned, strict=True)]
        label = {"tuned": "worker.rotation.rotate in-process, the worker's malloc settings",
                 "default": "worker.rotation.rotate in-process, glibc's default malloc"}.get(name, name)
        over = "-" if name == "tuned" or name.startswith("echo") else f"{med[name] - med['tuned']:+.2f}"
        rows.append([label, f"{med[name]:.2f}", " / ".join(f"{v:.2f}" for v in values),
                     f"{statistics.median(ratios):.3f}", f"{min(ratios):.3f}-{max(ratios):.3f}", over,
                     f"{statistics.median(switches[name]):.1f}" if name in switches else "-"])
    print(f"{n} photos 1920x1080 per pass; median of {a.rounds} round(s), the order alternating; "
          f"one server process, one call in flight\n")
    print(table(["CPU per photo", "ms (median)", "ms per round", "x in-process (tuned)", "spread",
                 "ms over in-process", "context switches per photo"], rows))


if __name__ == "__main__":
    main()
