"""Evaluation on the split a model held out: our model and the legacy path through a real
`worker serve` on loopback, small faces pasted into 1080p scenes, and the eigenfaces baseline."""

from __future__ import annotations

import io
import itertools
import random
import tempfile
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from worker.api import abimage_pb2, abimage_pb2_grpc, imageworker_v1_pb2, imageworker_v1_pb2_grpc
from worker.classifier import NO_FACE, UNKNOWN, Box
from worker.faces import artifact, legacy
from worker.faces.training import baseline, metrics, scenes
from worker.faces.training.commands import GROUPS
from worker.faces.training.dataset import gallery
from worker.local import LocalWorker

SMALL_FACES = (60, 120)
MAX_MESSAGE = 64 * 1024 * 1024


@contextmanager
def running_worker(model: Path | None, processes: int = 1,
                   timeout: float = 120.0) -> Iterator[Callable[[], grpc.Channel]]:
    """A freshly started local ``worker serve`` whose every process serves, as a function that gives the
    channel for the next call: its processes in turn. One channel to a shared port is one connection, which
    the kernel hands to one process, so the others would sit idle; each process has its own socket here."""
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp, ExitStack() as stack:
        npz = Path(model).with_suffix(".npz") if model is not None else None
        worker = stack.enter_context(LocalWorker(processes, Path(tmp) / "worker.log", timeout, model=npz,
                                                 private=True))
        opts = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        channels = [stack.enter_context(grpc.insecure_channel(a, options=opts)) for a in worker.addresses]
        yield itertools.cycle(channels).__next__  # one C call: safe from the pool's threads


@dataclass(frozen=True)
class HeldOut:
    """The evaluation photos and their true labels (never-seen people: ``unknown``)."""

    paths: list[Path]
    truth: list[str]
    train_paths: list[Path]
    train_truth: list[str]


def held_out(meta: dict, data: Path) -> HeldOut:
    """Rebuild the split recorded in a model's metadata, with files under ``data``."""
    s = meta.get("split")
    if not s or not s.get("test_people"):
        raise ValueError("this model records no held-out split: train it with --hold-out to evaluate it")
    paths, truth = [], []
    for person, files in s["test_people"].items():
        paths += [data / f for f in files]
        truth += [person] * len(files)
    everyone = gallery(data)
    for person in s["test_negatives"]:
        paths += everyone[person]
        truth += [UNKNOWN] * len(everyone[person])
    train_paths, train_truth = [], []
    for person, files in s["train_people"].items():
        train_paths += [data / f for f in files]
        train_truth += [person] * len(files)
    for person in s["train_negatives"]:
        train_paths += everyone[person]
        train_truth += [UNKNOWN] * len(everyone[person])
    missing = [str(p) for p in paths + train_paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} photos of the split are missing under {data}, e.g. {missing[0]}")
    return HeldOut(paths, truth, train_paths, train_truth)


def _classify(channel, data: bytes) -> imageworker_v1_pb2.ClassifyResponse:
    stub = imageworker_v1_pb2_grpc.ImageWorkerStub(channel)
    return stub.Classify(imageworker_v1_pb2.ClassifyRequest(image=data), timeout=120)


def subject_label(reply: imageworker_v1_pb2.ClassifyResponse, portrait: Box) -> str:
    """Label of the face at the pasted portrait's subject (its centre), ``no_face`` if none is there.

    LFW portraits often show a second face as large as the subject's; in a
    scene, "largest face" cannot say which was meant, the position can.
    """
    cx, cy = (portrait.left + portrait.right) / 2, (portrait.top + portrait.bottom) / 2
    best, label = None, NO_FACE
    for f in reply.faces:
        fx, fy = (f.box.left + f.box.right) / 2, (f.box.top + f.box.bottom) / 2
        inside = f.box.left <= cx <= f.box.right and f.box.top <= cy <= f.box.bottom
        d = (fx - cx) ** 2 + (fy - cy) ** 2
        if inside and (best is None or d < best):
            best, label = d, f.label
    return label


def _recognize(channel, thumb: np.ndarray) -> str:
    stub = abimage_pb2_grpc.ABImageServiceStub(channel)
    image = abimage_pb2.ABImage(color=False, data=thumb.tobytes(), width=thumb.shape[1], height=thumb.shape[0])
    request = abimage_pb2.ABCustomImageEndpointRequest(image=image)
    return stub.RecognizeFace(request, timeout=60).classification


def small_face_photos(paths: list[Path], seed: int) -> list[tuple[bytes, Box]]:
    """Each photo pasted into a 1920x1080 scene with its face 60-120 px wide (seeded), and where."""
    rng = random.Random(seed)
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(scenes.pasted(img, rng.randint(*SMALL_FACES), rng))
    return out


def turned_photo(path: Path, degrees: int) -> bytes:
    """A photo turned clockwise by ``degrees`` as a scanner or a camera that writes no orientation
    stores it: a JPEG without EXIF, upright again after a counter-clockwise turn by ``degrees``."""
    with Image.open(path) as img:
        buf = io.BytesIO()
        img.convert("RGB").transpose(_CLOCKWISE[degrees]).save(buf, "JPEG", quality=95)
    return buf.getvalue()


TURNS = (90, 180, 270)
_CLOCKWISE = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}


def evaluate(model_path: Path | None, data: Path, processes: int = 1, seed: int = 0,
             only: Collection[str] = GROUPS) -> dict[str, tuple]:
    """``{variant: (truth, answers)}`` for the variants of the groups (``GROUPS``) in ``only``."""
    meta = artifact.load(model_path).meta
    split = held_out(meta, data)
    known = list(meta["labels"])
    results: dict[str, tuple] = {}
    thumbs = []
    if "legacy" in only or "baseline" in only:
        for p in split.paths:
            with Image.open(p) as img:
                thumbs.append(legacy.old_client_thumbnail(img))
    with running_worker(model_path, processes) as channel, ThreadPoolExecutor(max(4, 2 * processes)) as pool:
        if "model" in only:
            files = [p.read_bytes() for p in split.paths]
            results["model"] = (split.truth, [r.label for r in pool.map(lambda b: _classify(channel(), b), files)])
        if "turned" in only:
            for degrees in TURNS:
                files = [turned_photo(p, degrees) for p in split.paths]
                replies = list(pool.map(lambda b: _classify(channel(), b), files))
                results[f"turned{degrees}"] = (split.truth, [r.label for r in replies])
                found = [r.orientation for r in replies if r.label != NO_FACE]
                results[f"_orientation{degrees}"] = (found.count(degrees), len(found))
        if "legacy" in only:
            results["legacy"] = (split.truth, list(pool.map(lambda t: _recognize(channel(), t), thumbs)))
        if "small" in only:
            pasted = small_face_photos(split.paths, seed)
            replies = list(pool.map(lambda s: _classify(channel(), s[0]), pasted))
            results["small"] = (split.truth, [r.label for r in replies])
            results["small_subject"] = (split.truth,
                                        [subject_label(r, s[1]) for r, s in zip(replies, pasted, strict=True)])
    if "baseline" in only:
        clf = baseline.train_eigenfaces(np.array([baseline.lfw_crop(p) for p in split.train_paths]),
                                        split.train_truth, seed)
        answers = clf.predict(np.array([baseline.lfw_crop(p) for p in split.paths]))
        results["eigenfaces"] = (split.truth, [str(a) for a in answers])
        # The old prototype's mistake: a model of face crops shown whole-photo thumbnails.
        answers = clf.predict(np.array([t.ravel() / 255.0 for t in thumbs], dtype=np.float32))
        results["prototype"] = (split.truth, [str(a) for a in answers])
    results["_labels"] = (known + [UNKNOWN, NO_FACE], known)
    return results


TITLES = {
    "model": "Our model, 250x250 photos through ImageWorker.Classify",
    **{f"turned{d}": f"The same photos turned {d}° clockwise (JPEG, no EXIF), through Classify" for d in TURNS},
    "small": "Our model, the same faces pasted at 60-120 px into 1920x1080 scenes, through Classify "
             "(the image's label: its largest face)",
    "small_subject": "The same scenes, scored on the face at the portrait's subject (the label Classify "
                     "gave that face)",
    "legacy": "Legacy path: whole photo shrunk to 37x50 grey, through ABImageService.RecognizeFace",
    "eigenfaces": "Baseline: eigenfaces (PCA 150 + RBF SVM) on fetch_lfw_people-style 50x37 crops, in-process",
    "prototype": "The old prototype's setup: that eigenfaces model shown the legacy 37x50 whole-photo "
                 "thumbnails, in-process",
}


def _section(results: dict[str, tuple], key: str) -> str:
    labels, known = results["_labels"]
    notes = ()
    if key.startswith("turned"):
        degrees = key.removeprefix("turned")
        right, found = results["_orientation" + degrees]
        notes = (f"orientation {degrees} reported for {right} of the {found} photos with a face",)
    return metrics.markdown(TITLES[key], *results[key], labels, known, UNKNOWN, notes)


def report(results: dict[str, tuple]) -> str:
    """Markdown sections for every variant."""
    return "\n".join(_section(results, k) for k in TITLES if k in results)


def headline(results: dict[str, tuple]) -> dict[str, dict]:
    """Per variant: known accuracy and never-seen unknown rate (what ``--record`` stores in the JSON)."""
    _, known = results["_labels"]
    return {k: {m: (round(v, 4) if isinstance(v, float) else v)
                for m, v in metrics.summary(*results[k], known, UNKNOWN).items()}
            for k in TITLES if k in results}


def record(model_path: Path | None, results: dict[str, tuple], command: str) -> None:
    """Write the headline figures into the model's JSON (not covered by the .npz checksum)."""
    import json
    import time

    _, json_path = artifact.paths(model_path or artifact.SHIPPED)
    meta = json.loads(json_path.read_text())
    meta["evaluation"] = {"command": command, "date": time.strftime("%Y-%m-%d"), **headline(results)}
    json_path.write_text(json.dumps(meta, indent=1) + "\n")
