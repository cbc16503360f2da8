"""Classification throughput (issue 6, item 4): 250x250 face photos and 1920x1080 photos with one small face.

Part 1 sends Classify calls to a real `worker serve --processes 2` on loopback
(both processes get the same number of connections) and reports images/s.
Part 2 times each step of the pipeline in this process, one image at a time,
to show where the time goes: decode (+EXIF, to RGB), detect, align
(landmarks + chip), embed, classify.
Part 3 prices the search of the other quarter turns (``faces_any_turn``) against
the upright pass alone (``faces_in``, all there was before), in this process:
on images without a face (every turn is searched), upright photos and turned ones.
Part 4 prices ``rotate auto`` on 1920x1080 photos without an EXIF orientation (the faces decide:
``worker.auto_rotate`` with the classifier's ``upright_turn``, decode and write included) against
one upright detector pass on the same photo, each timed back to back in this process.

    python bench/bench_classify.py [--photos 200] [--scenes 100] [--processes 2] [--turns 40] [--auto 20]

Needs the LFW photos: set IMAGEBATCH_LFW to an LFW folder (lfw-deepfunneled).
"""

from __future__ import annotations

import argparse
import io
import itertools
import random
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from common import print_header, table
from PIL import Image
from servers import running, worker_cmd

from worker.api import imageworker_v1_pb2 as pb
from worker.api import imageworker_v1_pb2_grpc as pb_grpc
from worker.decode import DEFAULT_MAX_PIXELS, upright
from worker.faces import load_classifier
from worker.faces.pipeline import (
    DlibModels,
    detect_faces,
    detect_scored,
    embed_chips,
    face_chip,
    faces_any_turn,
    faces_in,
    to_rgb,
)
from worker.faces.training.dataset import gallery, lfw_from_env
from worker.faces.training.evaluate import turned_photo
from worker.faces.training.scenes import backgrounds, pasted
from worker.rotation import auto_rotate

OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 * 2**20),
           ("grpc.max_send_message_length", 64 * 2**20)]


def corpora(photos: int, scenes: int) -> dict[str, list[bytes]]:
    lfw = lfw_from_env()
    if lfw is None or not lfw.is_dir():
        sys.exit("set IMAGEBATCH_LFW to an LFW folder (lfw-deepfunneled) to run this")
    files = sorted(f for fs in gallery(lfw).values() for f in fs)
    rng = random.Random(0)
    chosen = rng.sample(files, max(photos, scenes))
    portraits = [f.read_bytes() for f in chosen[:photos]]
    small = []
    for f in chosen[:scenes]:
        with Image.open(f) as img:
            small.append(pasted(img, rng.randint(60, 120), rng)[0])
    return {"250x250 LFW photo": portraits, "1920x1080, one 60-120 px face": small}


def balanced_stubs(address: str, probe: bytes, processes: int, per_process: int) -> list:
    """Connections until each server process holds ``per_process`` of them (SO_REUSEPORT spreads connections)."""
    kept: dict[str, list] = {}
    for _ in range(64 * processes * per_process):
        channel = grpc.insecure_channel(address, options=OPTIONS)
        stub = pb_grpc.ImageWorkerStub(channel)
        who = stub.Classify(pb.ClassifyRequest(image=probe), timeout=60, wait_for_ready=True).worker
        if len(kept.setdefault(who, [])) < per_process:
            kept[who].append(stub)
        else:
            channel.close()
        if len(kept) >= processes and all(len(v) >= per_process for v in kept.values()):
            return [s for group in zip(*kept.values(), strict=False) for s in group]
    sys.exit(f"could not reach {processes} worker processes: {({k: len(v) for k, v in kept.items()})}")


def throughput(address: str, images: list[bytes], processes: int, concurrency: int) -> tuple[float, Counter, float]:
    stubs = balanced_stubs(address, images[0], processes, max(1, concurrency // processes))
    for data in images[: 2 * concurrency]:  # warm-up: first calls pay for page faults and caches
        stubs[0].Classify(pb.ClassifyRequest(image=data), timeout=60)
    who: Counter = Counter()
    latencies: list[float] = []

    def call(i: int) -> None:
        t = time.perf_counter()
        answer = stubs[i % len(stubs)].Classify(pb.ClassifyRequest(image=images[i]), timeout=120)
        latencies.append(time.perf_counter() - t)
        who[answer.worker] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(len(images))))
    return len(images) / (time.perf_counter() - start), who, statistics.median(latencies)


def steps(images: list[bytes]) -> dict[str, float]:
    """Median milliseconds per image of each step, in this process."""
    model = load_classifier()
    d = model.dlib
    times: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "align", "embed", "classify", "total")}
    for data in images:
        t0 = time.perf_counter()
        rgb = to_rgb(upright(data, DEFAULT_MAX_PIXELS))
        t1 = time.perf_counter()
        boxes = detect_faces(rgb, d)
        t2 = time.perf_counter()
        chips = [face_chip(rgb, b, d) for b in boxes]
        t3 = time.perf_counter()
        emb = embed_chips(chips, d)
        t4 = time.perf_counter()
        model.model.main.predict(emb)
        t5 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("align", t2, t3), ("embed", t3, t4),
                        ("classify", t4, t5), ("total", t0, t5)):
            times[k].append((b - a) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def turn_corpora(count: int) -> dict[str, list[bytes]]:
    """Face-free images (crops and mirror images of scikit-learn's two sample photos), and LFW photos
    upright and turned 90 degrees clockwise (JPEG, no EXIF)."""
    lfw = lfw_from_env()
    files = random.Random(1).sample(sorted(f for fs in gallery(lfw).values() for f in fs), count)
    rng = random.Random(2)
    scenes = [bg.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 4 >= 2 else bg
              for i, bg in zip(range(count), itertools.cycle(backgrounds()))]
    crops = []
    for bg in scenes:
        x, y = rng.randrange(bg.width - 250), rng.randrange(bg.height - 250)
        crops.append(bg.crop((x, y, x + 250, y + 250)))
    return {"250x250, no face": [_jpeg(c) for c in crops],
            "1920x1080, no face": [_jpeg(bg) for bg in scenes[:max(4, count // 4)]],
            "250x250 LFW photo, upright": [f.read_bytes() for f in files],
            "250x250 LFW photo, turned 90°": [turned_photo(f, 90) for f in files],
            "1920x1080, one 60-120 px face, upright": [_scene(f, rng) for f in files[: count // 2]]}


def _scene(photo: Path, rng: random.Random) -> bytes:
    with Image.open(photo) as img:
        return pasted(img, rng.randint(60, 120), rng)[0]


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class _CountingDetector:
    """dlib's detector, counting its runs."""

    def __init__(self, detector) -> None:
        self.detector, self.runs = detector, 0

    def run(self, *args):
        self.runs += 1
        return self.detector.run(*args)


def turn_cost(images: list[bytes]) -> tuple[float, float, float, float, str, float, int, int]:
    """Median ms of the upright pass alone and of the search with the turns, the extra ms (median, mean),
    the ratio search / upright pass (median and range over the images, each timed back to back), mean
    detector runs of the search, how many images it searched past upright and how many it found turned."""
    d = load_classifier().dlib
    counting = _CountingDetector(d.detector)
    models = DlibModels(counting, d.predictor, d.net)
    upright_ms, turns_ms, runs, searched, turned = [], [], 0, 0, 0
    for data in images:
        rgb = to_rgb(upright(data, DEFAULT_MAX_PIXELS))
        t0 = time.perf_counter()
        faces_in(rgb, models)
        t1 = time.perf_counter()
        upright_runs = counting.runs
        orientation, _, _ = faces_any_turn(rgb, models)
        t2 = time.perf_counter()
        upright_ms.append((t1 - t0) * 1000)
        turns_ms.append((t2 - t1) * 1000)
        runs += counting.runs - upright_runs
        searched += counting.runs - upright_runs > upright_runs
        turned += orientation != 0
        counting.runs = 0
    a, b = statistics.median(upright_ms), statistics.median(turns_ms)
    mean_extra = statistics.mean(turns_ms) - statistics.mean(upright_ms)
    ratios = [t / u for t, u in zip(turns_ms, upright_ms, strict=True)]
    ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
    return a, b, b - a, mean_extra, ratio, runs / len(images), searched, turned


def auto_cost(images: list[bytes], rounds: int) -> tuple[float, float, str, Counter]:
    """Median ms of one upright detector pass and of ``rotate auto`` (decode, face search, write), the ratio
    auto / pass (median and range, each image timed back to back ``rounds`` times) and what decided."""
    classifier = load_classifier()
    pass_ms, auto_ms, ratios, decided = [], [], [], Counter()
    for data in images:
        rgb = to_rgb(upright(data, DEFAULT_MAX_PIXELS))
        for _ in range(rounds):
            t0 = time.perf_counter()
            detect_scored(rgb, classifier.dlib)
            t1 = time.perf_counter()
            out = auto_rotate(data, lambda d=data: classifier.upright_turn(d, DEFAULT_MAX_PIXELS))
            t2 = time.perf_counter()
            pass_ms.append((t1 - t0) * 1000)
            auto_ms.append((t2 - t1) * 1000)
            ratios.append((t2 - t1) / (t1 - t0))
        decided[out.decided_by] += 1
    spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
    return statistics.median(pass_ms), statistics.median(auto_ms), spread, decided


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=200, help="250x250 photos to classify")
    ap.add_argument("--scenes", type=int, default=100, help="1920x1080 scenes to classify")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (one per core)")
    ap.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    ap.add_argument("--steps", type=int, default=40, help="images per corpus timed step by step in-process")
    ap.add_argument("--turns", type=int, default=40, help="images per corpus for the cost of the quarter turns")
    ap.add_argument("--auto", type=int, default=20, help="1080p photos per kind for the cost of rotate auto")
    ap.add_argument("--auto-rounds", type=int, default=3, help="times each photo is timed for rotate auto")
    ap.add_argument("--parts", default="1234", help="which parts to run (digits 1-4)")
    args = ap.parse_args()

    print_header("Classification throughput and where the time goes")
    if "1" in args.parts or "2" in args.parts:
        sets = corpora(args.photos, args.scenes)
    if "1" in args.parts:
        rows = []
        with running(worker_cmd("--processes", str(args.processes))) as (address, _):
            for name, images in sets.items():
                rate, who, median = throughput(address, images, args.processes, args.concurrency)
                rows.append((name, len(images), rate, median * 1000, " / ".join(str(v) for v in who.values())))
        print(table(["images", "count", "images/s", "median latency ms", "calls per worker process"], rows))
        print(f"\n`worker serve --processes {args.processes}`, {args.concurrency} calls in flight over "
              "connections spread evenly across the processes.\n")
    if "2" in args.parts:
        rows = []
        for name, images in sets.items():
            ms = steps(images[: args.steps])
            rows.append((name, *(ms[k] for k in ("decode", "detect", "align", "embed", "classify", "total")),
                         1000 / ms["total"]))
        print(table(["images", "decode ms", "detect ms", "align ms", "embed ms", "classify ms", "total ms",
                     "images/s, 1 core"], rows))
        print(f"\nMedian per image over {args.steps} images of each kind, one thread, in-process (no gRPC).\n")
    if "3" in args.parts:
        rows = [(name, len(images), *turn_cost(images)) for name, images in turn_corpora(args.turns).items()]
        print(table(["images", "count", "upright pass only ms", "with the turns ms", "extra ms",
                     "mean extra ms", "search / upright (range)", "detector runs", "searched the turns",
                     "found turned"], rows))
        print("\nMedian per image after decoding, one thread, in-process: `faces_in` (the upright pass, all "
              "there was before) against `faces_any_turn`; detector runs: their mean in the search (a 2x "
              "upsampled retry of a small image counts too); searched the turns: images whose upright pass "
              "had no sure face; found turned: images answered under a turn other than 0.")
    if "4" in args.parts:
        kinds = turn_corpora(args.auto)
        rows = []
        for name in ("1920x1080, no face", "1920x1080, one 60-120 px face, upright"):
            images = kinds[name][: args.auto]
            pass_ms, auto_ms, ratio, decided = auto_cost(images, args.auto_rounds)
            rows.append((name, len(images), pass_ms, auto_ms, ratio, dict(decided)))
        print(table(["photos (no EXIF orientation)", "count", "one upright pass ms", "rotate auto ms",
                     "auto / pass (range)", "decided by"], rows))
        print(f"\nMedian per photo, each timed {args.auto_rounds} times back to back, one thread, in-process: "
              "`detect_scored` on the decoded photo against `auto_rotate` with the classifier's `upright_turn` "
              "(decode, face search, write).")

if __name__ == "__main__":
    main()
