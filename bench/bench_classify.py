"""Classification: issue 20's three rows side by side (the default, parts 4 and 5), and where the time goes.

Part 4 prices, per 1920x1080 photo without an EXIF orientation (face-free, and with one upright face),
``classify`` (decode included) and ``rotate auto`` (``worker.auto_rotate`` with the classifier's
``upright_turn``: decode, face search, write) against one upright detector pass (dlib's detector on the
decoded frame at full size), the three timed back to back in alternating order, in this process, in CPU
time of the thread and in wall time. Goals: both <= 1.5x one pass.
Part 5 runs ``batch run MANIFEST`` (the embedded worker) and face_recognition's CLI
(``face_recognition --cpus 2 KNOWN FOLDER``) on the same files, start-up included, alternating which goes
first: held-out LFW portraits and face-free 1080p photos, with each side's accuracy. Goals: >= 1.4x
faster on portraits, >= 2x on face-free photos, at the same accuracy. Needs face_recognition's CLI:
``pip install --no-deps face-recognition==1.3.0 'setuptools<81'`` (its dlib is our dlib-bin; its model
package imports pkg_resources).
Part 1 sends Classify calls to a real `worker serve --processes 2` on loopback (images/s); part 2 times
each step of the pipeline in-process (decode, detect, align, embed, classify); part 3 prices the search of
the other quarter turns (``faces_any_turn``) against the upright pass alone (``faces_in``) on several kinds
of images.

    python bench/bench_classify.py                      # parts 4 and 5, about 3 minutes on a quiet machine
    python bench/bench_classify.py --parts 123 [--photos 200] [--scenes 100] [--turns 40]

Needs the LFW photos: set IMAGEBATCH_LFW to an LFW folder (lfw-deepfunneled).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
from common import BIN, print_header, table, write_manifest
from PIL import Image
from servers import running, worker_cmd

from worker.api import imageworker_v1_pb2 as pb
from worker.api import imageworker_v1_pb2_grpc as pb_grpc
from worker.classifier import NO_FACE, UNKNOWN
from worker.decode import DEFAULT_MAX_PIXELS, upright
from worker.faces import artifact, load_classifier
from worker.faces.pipeline import (
    DlibModels,
    detect_faces,
    embed_chips,
    face_chip,
    faces_any_turn,
    faces_in,
    to_rgb,
)
from worker.faces.training.dataset import gallery, lfw_from_env
from worker.faces.training.evaluate import held_out, turned_photo
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


def no_face_photos(count: int) -> list[bytes]:
    """``count`` different face-free 1920x1080 JPEGs (no EXIF): crops of 70-100 % of scikit-learn's two sample
    photos, mirrored or not, scaled back to 1920x1080."""
    rng = random.Random(3)
    out = []
    for i, bg in zip(range(count), itertools.cycle(backgrounds()), strict=False):
        keep = 1.0 if i < 2 else rng.uniform(0.7, 1.0)
        w, h = round(bg.width * keep), round(bg.height * keep)
        x, y = rng.randrange(bg.width - w + 1), rng.randrange(bg.height - h + 1)
        img = bg.crop((x, y, x + w, y + h)).resize(bg.size, Image.Resampling.BILINEAR)
        out.append(_jpeg(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img))
    return out


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def goal_costs(images: list[bytes], rounds: int) -> dict[str, object]:
    """Per photo and round, back to back in alternating order: one upright detector pass (dlib's detector on
    the decoded frame at full size, the issue's unit), ``classify`` (decode included) and ``rotate auto``
    (``auto_rotate`` with the classifier's ``upright_turn``: decode, face search, write). Ratios to the pass
    in CPU time of this thread (steadier than wall time on a shared machine) and in wall time."""
    classifier = load_classifier()
    detector = classifier.dlib.detector
    cpu: dict[str, list[float]] = {"pass": [], "classify": [], "auto": []}
    wall: dict[str, list[float]] = {k: [] for k in cpu}
    labels, decided = Counter(), Counter()
    for i, data in enumerate(images):
        rgb = to_rgb(upright(data, DEFAULT_MAX_PIXELS))
        steps = {"pass": lambda x=rgb: detector.run(x, 0, 0.0),
                 "classify": lambda d=data: classifier.classify(d, DEFAULT_MAX_PIXELS),
                 "auto": lambda d=data: auto_rotate(d, lambda: classifier.upright_turn(d, DEFAULT_MAX_PIXELS))}
        for r in range(rounds):
            order = list(steps) if (i + r) % 2 == 0 else list(reversed(steps))
            for name in order:
                c0, w0 = time.thread_time(), time.perf_counter()
                out = steps[name]()
                cpu[name].append(time.thread_time() - c0)
                wall[name].append(time.perf_counter() - w0)
                if r == 0 and name == "classify":
                    labels[out.label] += 1
                if r == 0 and name == "auto":
                    decided[out.decided_by] += 1
    result: dict[str, object] = {"pass_ms": statistics.median(cpu["pass"]) * 1000,
                                 "labels": dict(labels), "decided": dict(decided)}
    for name in ("classify", "auto"):
        result[f"{name}_ms"] = statistics.median(cpu[name]) * 1000
        result[f"{name}_cpu"] = _spread([a / b for a, b in zip(cpu[name], cpu["pass"], strict=True)])
        result[f"{name}_wall"] = _spread([a / b for a, b in zip(wall[name], wall["pass"], strict=True)])
    return result


# -- against face_recognition's command line ----------------------------------------------------

def cli_sets(folder: Path, portraits: int, no_faces: list[bytes], known_each: int) -> dict[str, object]:
    """The shipped model's held-out photos (``portraits`` of them, people it knows and never-seen ones) and the
    face-free 1080p photos as files under ``folder``, each set with its truth, and a known-people folder for
    face_recognition: ``known_each`` training photos of each person the model knows."""
    lfw = lfw_from_env()
    meta = artifact.load().meta
    split = held_out(meta, lfw)
    pairs = random.Random(4).sample(list(zip(split.paths, split.truth, strict=True)), min(portraits, len(split.paths)))
    sets = {}
    for name, files in (("250x250 LFW portraits", [(p.read_bytes(), t) for p, t in pairs]),
                        ("1920x1080, no face", [(d, NO_FACE) for d in no_faces])):
        where = folder / name.split(",")[0].replace(" ", "_")
        where.mkdir()
        truth = {}
        for i, (data, t) in enumerate(files):
            path = where / f"{i:04d}.jpg"
            path.write_bytes(data)
            truth[path.name] = t
        write_manifest(where.with_suffix(".csv"), ({"path": str(where / n), "op": "classify"} for n in truth))
        one = where.with_name(where.name + "_one")  # the set's first image alone: each command's start-up
        one.mkdir()
        first = sorted(truth)[0]
        (one / first).write_bytes((where / first).read_bytes())
        write_manifest(one.with_suffix(".csv"), [{"path": str(one / first), "op": "classify"}])
        sets[name] = (where, truth)
    known = folder / "known"
    known.mkdir()
    for person in meta["labels"]:
        photos = [p for p, t in zip(split.train_paths, split.train_truth, strict=True) if t == person]
        for j, p in enumerate(photos[:known_each]):
            (known / f"{person.replace(' ', '_')}__{j}.jpg").write_bytes(p.read_bytes())
    return {"known": known, "sets": sets}


def timed_run(command: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float, float]:
    """``subprocess.run(command)``, its wall seconds and the CPU seconds (user + system) of it and every process
    under it, sampled every 10 ms (face_recognition never waits for its pool's processes, so the kernel's
    RUSAGE_CHILDREN would leave them out; a process's last <10 ms are)."""
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample(root: psutil.Process) -> None:
        while not done.wait(0.01):
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    times = proc.cpu_times()
                    cpu[proc.pid] = times.user + times.system
                except psutil.Error:
                    pass

    t = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=kwargs.get("env")) as proc:
        sampler = threading.Thread(target=sample, args=(psutil.Process(proc.pid),), daemon=True)
        sampler.start()
        out, err = proc.communicate()
        seconds = time.perf_counter() - t
        done.set()
        sampler.join()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command, out, err)
    return subprocess.CompletedProcess(command, proc.returncode, out, err), seconds, sum(cpu.values())


def ours(manifest: Path, out: Path) -> tuple[float, dict[str, str], float]:
    """Seconds of ``batch run MANIFEST`` (embedded worker, start-up included), its label per file name, and the
    CPU seconds of the command and its worker processes."""
    _, seconds, cpu = timed_run([str(BIN / "batch"), "run", str(manifest), "--out", str(out), "--restart", "--quiet"])
    with open(out / "results.csv", newline="") as f:
        return seconds, {Path(r["path"]).name: r["label"] for r in csv.DictReader(f)}, cpu


def theirs(known: Path, folder: Path, cpus: int) -> tuple[float, dict[str, str], float]:
    """Seconds of ``face_recognition --cpus N KNOWN FOLDER``, its answer per file name (the closest known
    person that matched, ``unknown`` for faces that matched nobody, ``no_face`` without a face), and the CPU
    seconds of it and its pool's processes."""
    done, seconds, cpu = timed_run(
        [str(BIN / "face_recognition"), "--cpus", str(cpus), "--show-distance", "true", str(known), str(folder)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each text in one write: never split
    best: dict[str, tuple[float, str]] = {}
    # Its pool's processes print each line's text and its newline as two writes, so lines can run into each
    # other: read "FOLDER/NNNN.jpg,NAME,DISTANCE" wherever it stands.
    for file, name, distance in re.findall(re.escape(str(folder)) + r"/(\d+\.jpg),([\w-]+),(None|[\d.]+)",
                                           done.stdout):
        label = {"unknown_person": UNKNOWN, "no_persons_found": NO_FACE}.get(
            name, name.split("__")[0].replace("_", " "))  # a known photo's name: PERSON__N
        d = float(distance) if distance != "None" else math.inf
        if file not in best or d < best[file][0]:
            best[file] = (d, label)
    return seconds, {k: v[1] for k, v in best.items()}, cpu


def cli_comparison(sets: dict[str, object], rounds: int, cpus: int, scratch: Path) -> tuple[list[tuple], list[tuple]]:
    """Each set through both commands, alternating which goes first, ``rounds`` times; then each command on the
    set's first image alone (its start-up and one image), alternating too. Returns the comparison's rows and
    the start-up rows: each side's one-image seconds and what each further image adds."""
    rows, split = [], []
    for name, (folder, truth) in sets["sets"].items():
        one = folder.with_name(folder.name + "_one")
        mine, other, ratios, cpu_ratios, mine_one, other_one = [], [], [], [], [], []
        cpu: dict[str, list[float]] = {"ours": [], "theirs": [], "ours 1": [], "theirs 1": []}
        for r in range(rounds):
            runs = [("ours", lambda f=folder: ours(f.with_suffix(".csv"), scratch / "out")),
                    ("theirs", lambda f=folder: theirs(sets["known"], f, cpus)),
                    ("ours 1", lambda o=one: ours(o.with_suffix(".csv"), scratch / "out")),
                    ("theirs 1", lambda o=one: theirs(sets["known"], o, cpus))]
            timed = dict((who, run()) for who, run in (runs if r % 2 == 0 else runs[::-1]))
            mine.append(timed["ours"][0])
            other.append(timed["theirs"][0])
            ratios.append(timed["theirs"][0] / timed["ours"][0])
            cpu_ratios.append(timed["theirs"][2] / timed["ours"][2])
            mine_one.append(timed["ours 1"][0])
            other_one.append(timed["theirs 1"][0])
            for who in cpu:
                cpu[who].append(timed[who][2])
            answers = {who: timed[who][1] for who in ("ours", "theirs")}
        right = {who: sum(labels.get(k) == t for k, t in truth.items()) for who, labels in answers.items()}
        rows.append((name, len(truth), statistics.median(mine), statistics.median(other), _spread(ratios),
                     statistics.median(cpu["ours"]), statistics.median(cpu["theirs"]), _spread(cpu_ratios),
                     f"{right['ours']}/{len(truth)}", f"{right['theirs']}/{len(truth)}"))
        n = len(truth) - 1
        c = {who: statistics.median(v) for who, v in cpu.items()}
        split.append((name, statistics.median(mine_one), statistics.median(other_one),
                      1000 * (statistics.median(mine) - statistics.median(mine_one)) / n,
                      1000 * (statistics.median(other) - statistics.median(other_one)) / n,
                      c["ours 1"], c["theirs 1"], 1000 * (c["ours"] - c["ours 1"]) / n,
                      1000 * (c["theirs"] - c["theirs 1"]) / n))
    return rows, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=200, help="250x250 photos to classify")
    ap.add_argument("--scenes", type=int, default=100, help="1920x1080 scenes to classify")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (one per core)")
    ap.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    ap.add_argument("--steps", type=int, default=40, help="images per corpus timed step by step in-process")
    ap.add_argument("--turns", type=int, default=40, help="images per corpus for the cost of the quarter turns")
    ap.add_argument("--no-faces", type=int, default=20, help="face-free 1080p photos (parts 4 and 5)")
    ap.add_argument("--with-face", type=int, default=10, help="1080p photos with one upright face (part 4)")
    ap.add_argument("--rounds", type=int, default=3, help="times each photo is timed in part 4")
    ap.add_argument("--portraits", type=int, default=60, help="held-out LFW portraits (part 5)")
    ap.add_argument("--cli-rounds", type=int, default=2, help="runs of each command per set (part 5)")
    ap.add_argument("--known", type=int, default=5, help="photos of each known person for face_recognition")
    ap.add_argument("--cpus", type=int, default=2, help="face_recognition --cpus")
    ap.add_argument("--parts", default="45", help="which parts to run (digits 1-5); default: the issue's rows")
    args = ap.parse_args()
    if (lfw := lfw_from_env()) is None or not lfw.is_dir():  # every part reads LFW photos
        sys.exit("set IMAGEBATCH_LFW to an LFW folder (lfw-deepfunneled) to run this")

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
    if "4" in args.parts or "5" in args.parts:
        no_faces = no_face_photos(args.no_faces)
    if "4" in args.parts:
        rng = random.Random(5)
        files = random.Random(6).sample(sorted(f for fs in gallery(lfw_from_env()).values() for f in fs),
                                        args.with_face)
        rows = []
        for name, images in (("1920x1080, no face", no_faces),
                             ("1920x1080, one 60-120 px face, upright", [_scene(f, rng) for f in files])):
            c = goal_costs(images, args.rounds)
            rows.append((name, len(images), c["pass_ms"], c["classify_ms"], c["classify_cpu"], c["classify_wall"],
                         c["auto_ms"], c["auto_cpu"], c["auto_wall"], c["labels"], c["decided"]))
        print(table(["photos (no EXIF orientation)", "count", "one upright pass ms", "classify ms",
                     "classify / pass, CPU", "classify / pass, wall", "rotate auto ms", "auto / pass, CPU",
                     "auto / pass, wall", "labels", "rotate auto decided by"], rows))
        print(f"\nMedians per photo, each photo timed {args.rounds} times, the three back to back in alternating "
              "order, one thread, in-process. One upright pass: dlib's detector on the decoded frame at full size "
              "(the issue's unit; decode not included); classify: `FaceClassifier.classify` on the file's bytes; "
              "rotate auto: `auto_rotate` with the classifier's `upright_turn` (decode, face search, write). "
              "ms are CPU time of the thread; ratios per photo and round, median (range). Goals: both <= 1.5.\n")
    if "5" in args.parts:
        if not (BIN / "face_recognition").exists():
            sys.exit("part 5 needs face_recognition's CLI: pip install --no-deps face-recognition==1.3.0 "
                     "'setuptools<81' (its dlib is the dlib-bin we have; its models need pkg_resources)")
        with tempfile.TemporaryDirectory() as tmp:
            sets = cli_sets(Path(tmp), args.portraits, no_faces, args.known)
            rows, split = cli_comparison(sets, args.cli_rounds, args.cpus, Path(tmp))
        print(table(["images", "count", "batch run s", f"face_recognition --cpus {args.cpus} s",
                     "batch run faster by (range)", "batch run CPU s", "face_recognition CPU s",
                     "batch run less CPU by (range)", "batch run right", "face_recognition right"], rows))
        print()
        print(table(["images", "batch run, 1 image s", "face_recognition, 1 image s",
                     "batch run, wall ms per further image", "face_recognition, wall ms per further image",
                     "batch run, 1 image CPU s", "face_recognition, 1 image CPU s",
                     "batch run, CPU ms per further image", "face_recognition, CPU ms per further image"],
                    split))
        print(f"\nWall seconds, start-up included, median of {args.cli_rounds} runs of each command alternating "
              "which goes first: `batch run MANIFEST --restart --quiet` (the embedded worker, one process per "
              f"core) against `face_recognition --cpus {args.cpus} --show-distance true KNOWN FOLDER` with "
              f"{args.known} training photos of each person the model knows in KNOWN. Right: the image's label "
              "(face_recognition: its closest match) is the truth (a known person, `unknown` for never-seen "
              "people, `no_face`). Goals: >= 1.4x faster on portraits, >= 2x on no-face photos. Second table: "
              "each command on the set's first image alone (start-up and one image; medians of as many runs), "
              "what each further image adds to the median (wall, both cores). CPU: user + system seconds of each "
              "command and every process under it (worker, pool), sampled every 10 ms; steadier than wall time "
              "on a shared machine.\n")


if __name__ == "__main__":
    main()
