"""Face recognition: the pipeline's steps, training a small model, the shipped artifact, odd inputs.

Tests that need photos of people read LFW from $IMAGEBATCH_LFW and skip,
saying how to run them, where it is unset.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from pathlib import Path

import dlib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.support.faces import BUSH, CLOCKWISE, MAX_PIXELS, POWELL, SAMPLES, held_out_photo, lfw_root, needs_lfw
from worker.classifier import NO_FACE, UNKNOWN, Box, Classification
from worker.errors import InvalidArgument
from worker.faces import artifact, load_classifier, openset, pipeline
from worker.faces.legacy import old_client_thumbnail
from worker.faces.pipeline import (
    FaceClassifier,
    detect_faces,
    faces_any_turn,
    load_dlib_models,
    main_face_first,
    to_rgb,
    turned,
    unturned_box,
)
from worker.faces.training import scenes
from worker.faces.training.dataset import display_name, gallery, split


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def people() -> dict[str, list[Path]]:
    return gallery(lfw_root())


@pytest.fixture(scope="module")
def small_split(people):
    """12 training photos per known person, 3 held out each; 2 negative people (6 photos) train, 1 held out."""
    known = {BUSH: people[BUSH][:15], POWELL: people[POWELL][:15]}
    negatives = {n: people[n][:6] for n in ("Ariel Sharon", "Donald Rumsfeld", "Tony Blair")}
    parts = split(known, negatives, test_fraction=0.2, negative_test_people=1, seed=3)
    return parts


@pytest.fixture(scope="module")
def small_model(small_split, tmp_path_factory) -> FaceClassifier:
    from PIL import Image as _Image

    from worker.faces.training.train import train

    out = tmp_path_factory.mktemp("model") / "small.npz"
    train(small_split.train_people, small_split.train_negatives, out, seed=3,
          resampling=(_Image.Resampling.BICUBIC,), cache=False)
    return load_classifier(str(out))


@pytest.fixture(scope="module")
def shipped() -> FaceClassifier:
    return load_classifier()


# --- pure steps -------------------------------------------------------------------------------

def test_display_name_from_folder():
    assert display_name("George_W_Bush") == "George W Bush"
    assert display_name("Colin_Powell") == "Colin Powell"


def test_openset_numpy_softmax_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = np.repeat([0, 1, 2], 20)
    x[y == 1] += 2
    x[y == 2] -= 2
    coef, intercept = openset.fit_softmax(x, y, 3)
    model = openset.OpenSetModel(["a", "b"], coef, intercept, x[y < 2].astype(np.float32), y[y < 2], -20.0, 12.0)
    ours = model.probabilities(x)
    theirs = LogisticRegression(C=1.0, max_iter=5000).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_openset_binary_model_and_distance_gate():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 0.05, (10, 4)), rng.normal(1, 0.05, (10, 4))]).astype(np.float32)
    y = np.repeat([0, 1], 10)
    model = openset.fit(x, y, ["a", "b"])  # dlib's 0.6 rule without negatives
    assert model.threshold == pytest.approx(0.6)
    far = np.full((1, 4), 5.0, dtype=np.float32)
    classes, scores = model.predict(np.vstack([x[:1], x[-1:], far]))
    assert classes.tolist() == [0, 1, openset.UNKNOWN_INDEX]
    assert all(0 <= s <= 1 for s in scores)


def test_split_holds_out_whole_negative_people_deterministically(tmp_path):
    files = {f"P{i}": [tmp_path / f"p{i}_{j}.jpg" for j in range(10)] for i in range(2)}
    negs = {f"N{i}": [tmp_path / f"n{i}_{j}.jpg" for j in range(4)] for i in range(5)}
    a = split(files, negs, 0.3, 2, seed=7)
    b = split(files, negs, 0.3, 2, seed=7)
    assert a == b
    assert all(len(v) == 3 for v in a.test_people.values())
    assert not set(a.test_people["P0"]) & set(a.train_people["P0"])
    assert len(a.test_negatives) == 2 and not set(a.test_negatives) & set(a.train_negatives)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_to_rgb_gives_8bit_rgb_for_every_mode(mode):
    base = Image.linear_gradient("L").resize((64, 48))
    if mode in ("I;16", "I"):
        img = Image.fromarray((np.asarray(base, dtype=np.uint16) * 257).astype(np.uint16 if mode == "I;16"
                                                                                 else np.int32))
    elif mode == "F":
        img = Image.fromarray(np.asarray(base, dtype=np.float32) / 255.0)
    else:
        img = base.convert(mode)
    rgb = to_rgb(img)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    if mode in ("I;16", "I", "F", "L"):
        assert rgb[:, :, 0].max() >= 250  # full range kept, not clipped to white or crushed to black
        assert rgb[:, :, 0].min() <= 5


# --- the shipped artifact ---------------------------------------------------------------------

def test_shipped_artifact_loads_and_matches_its_checksum(shipped):
    npz, js = artifact.paths(artifact.SHIPPED)
    meta = json.loads(js.read_text())
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    assert meta["npz_sha256"] == digest
    assert shipped.version == digest[:12]
    assert shipped.name == "dlib-resnet-open-set"
    assert meta["labels"] == [BUSH, POWELL]
    assert npz.stat().st_size < 1_000_000
    assert meta["split"]["test_negatives"] and meta["split"]["test_people"][BUSH]


def test_the_shipped_detector_file_is_the_installed_dlibs_frontal_face_detector(tmp_path):
    """worker/models/frontal_face_detector.svm (read in 1 ms) is what ``dlib.get_frontal_face_detector()``
    builds (0.7 s), byte for byte as dlib saves it: regenerate it so if dlib's detector ever changes."""
    import dlib

    dlib.get_frontal_face_detector().save(str(tmp_path / "frontal.svm"))
    assert (tmp_path / "frontal.svm").read_bytes() == artifact.DETECTOR.read_bytes()


def test_corrupt_artifact_is_refused_clearly(tmp_path):
    npz, js = artifact.paths(artifact.SHIPPED)
    shutil.copy(npz, tmp_path / "m.npz")
    shutil.copy(js, tmp_path / "m.json")
    blob = bytearray((tmp_path / "m.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "m.npz").write_bytes(bytes(blob))
    with pytest.raises(artifact.ModelError, match="SHA-256"):
        load_classifier(str(tmp_path / "m.npz"))
    with pytest.raises(artifact.ModelError, match="missing"):
        load_classifier(str(tmp_path / "nothing.npz"))
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(artifact.ModelError, match="not valid JSON"):
        load_classifier(str(tmp_path / "m.npz"))


def test_artifact_of_another_format_version_is_refused(tmp_path):
    npz, js = artifact.paths(artifact.SHIPPED)
    shutil.copy(npz, tmp_path / "m.npz")
    meta = json.loads(js.read_text())
    meta["format_version"] = 99
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(artifact.ModelError, match="format version 99"):
        load_classifier(str(tmp_path / "m.npz"))


# --- inputs without a face, odd and broken inputs (shipped model) -----------------------------

def test_no_face_in_a_landscape_or_a_flat_image(shipped):
    china = (SAMPLES / "china.jpg").read_bytes()
    result = shipped.classify(china, MAX_PIXELS)
    assert result.label == NO_FACE and result.faces == [] and (result.width, result.height) == (640, 427)
    flat = encode(Image.new("RGB", (300, 200), (120, 140, 160)), "PNG")
    assert shipped.classify(flat, MAX_PIXELS).label == NO_FACE


@pytest.mark.parametrize("img", [
    Image.new("L", (30, 20), 128),
    Image.new("RGBA", (39, 39), (0, 0, 0, 0)),
    Image.new("1", (8, 8)),
    Image.new("P", (1, 1)),
], ids=["grey-30px", "rgba-39px", "bilevel-8px", "palette-1px"])
def test_tiny_images_answer_no_face(shipped, img):
    result = shipped.classify(encode(img, "PNG"), MAX_PIXELS)
    assert result.label == NO_FACE and (result.width, result.height) == img.size


def test_broken_and_oversized_images_give_invalid_argument(shipped):
    with pytest.raises(InvalidArgument, match="not a supported image"):
        shipped.classify(b"<html>not an image</html>", MAX_PIXELS)
    jpeg = (SAMPLES / "china.jpg").read_bytes()
    with pytest.raises(InvalidArgument, match="corrupt|truncated"):
        shipped.classify(jpeg[:2000], MAX_PIXELS)
    with pytest.raises(InvalidArgument, match="over the worker's limit"):
        shipped.classify(jpeg, 1000)


def test_legacy_bad_pixels_are_refused(shipped):
    with pytest.raises(InvalidArgument, match="uint8"):
        shipped.classify_legacy(np.zeros((50, 37), dtype=np.float32))
    with pytest.raises(InvalidArgument, match="empty"):
        shipped.classify_legacy(np.zeros((0, 37), dtype=np.uint8))
    assert shipped.classify_legacy(np.full((50, 37), 128, dtype=np.uint8)) == NO_FACE


# --- people (LFW) -----------------------------------------------------------------------------

@needs_lfw
def test_small_model_names_held_out_photos(small_model, small_split):
    for person, files in small_split.test_people.items():
        for f in files:
            result = small_model.classify(f.read_bytes(), MAX_PIXELS)
            assert isinstance(result, Classification)
            assert result.label == person, f.name
            assert result.faces[0].label == person and 0.5 <= result.confidence <= 1.0


@needs_lfw
def test_small_model_says_unknown_for_a_person_it_never_saw(small_model, small_split):
    (stranger, files), = small_split.test_negatives.items()
    answers = [small_model.classify(f.read_bytes(), MAX_PIXELS).label for f in files[:4]]
    assert answers == [UNKNOWN] * 4, stranger


@needs_lfw
def test_small_model_legacy_path_names_a_thumbnail(small_model, small_split):
    f = small_split.test_people[BUSH][0]
    with Image.open(f) as img:
        thumb = old_client_thumbnail(img)
    assert thumb.shape == (50, 37)
    assert small_model.classify_legacy(thumb) == BUSH


@needs_lfw
def test_shipped_model_on_odd_modes_of_a_face_photo(shipped, people):
    photo = Image.open(people[POWELL][-1])
    rgba = photo.convert("RGBA")
    grey16 = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    variants = {
        "grey": encode(photo.convert("L"), "JPEG"),
        "cmyk": encode(photo.convert("CMYK"), "JPEG"),
        "rgba": encode(rgba, "PNG"),
        "16-bit": encode(grey16, "PNG"),
        "tiff": encode(photo, "TIFF"),
    }
    for name, data in variants.items():
        assert shipped.classify(data, MAX_PIXELS).label == POWELL, name


@needs_lfw
def test_exif_orientation_is_applied_before_detection(shipped, people):
    photo = Image.open(people[BUSH][-1]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    data = encode(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)
    assert shipped.classify(data, MAX_PIXELS).label == BUSH


# --- turned photos: the other quarter turns when the upright image has no sure face ------------

@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_box_found_in_a_turned_copy_maps_back_exactly(degrees):
    rgb = np.zeros((40, 70, 3), dtype=np.uint8)  # not square: width and height must not be swapped
    rgb[0, 69] = 7  # the top-right corner
    face = Box(5, 9, 23, 31)
    rgb[face.top:face.bottom, face.left:face.right] = 255
    copy = turned(rgb, degrees)
    assert copy.flags.c_contiguous
    assert (copy[0, 0, 0] == 7) == (degrees == 90)  # counter-clockwise: the top-right corner comes to the top left
    ys, xs = np.nonzero(copy[:, :, 0] == 255)
    seen = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    assert unturned_box(seen, degrees, 70, 40) == face


@pytest.mark.parametrize(("script", "orientation", "looked"), [
    ({0: 2.0}, 0, [0]),  # a sure upright face: one pass
    ({90: 1.5}, 90, [0, 90]),  # the first sure face ends the search
    ({0: 0.4, 180: 2.0}, 180, [0, 90, 270, 180]),  # a weak face in an upside-down photo loses to the true turn
    ({90: 0.5, 270: 1.8}, 270, [0, 90, 270]),  # a weak face on the way does not stop the search
    ({0: 0.4, 180: 0.3}, 0, [0, 90, 270, 180]),  # a weak upright face that no turn beats is kept
    ({}, 0, [0, 90, 270, 180]),  # no face anywhere
], ids=["sure-upright", "sure-90", "weak-upright-true-180", "weak-90-true-270", "weak-upright-kept", "none"])
def test_turns_are_searched_until_a_sure_face_and_the_best_wins(monkeypatch, script, orientation, looked):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    copies = {d: turned(rgb, d) for d in (0, 90, 180, 270)}
    seen: list[int] = []

    def detect(work, models, budget=0, upsample=True):
        degrees = next(d for d, c in copies.items() if c.shape == work.shape and np.array_equal(c, work))
        seen.append(degrees)
        return ([Box(1, 2, 5, 9)], script[degrees]) if degrees in script else ([], -np.inf)

    monkeypatch.setattr(pipeline, "detect_scored", detect)
    monkeypatch.setattr(pipeline, "face_chip", lambda work, box, models: np.zeros((150, 150, 3), np.uint8))
    monkeypatch.setattr(pipeline, "embed_chips", lambda chips, models: np.zeros((len(chips), 128), np.float32))
    found, boxes, embeddings = faces_any_turn(rgb, None)
    assert (found, seen) == (orientation, looked)
    assert len(boxes) == len(embeddings) == (1 if script else 0)
    if boxes:
        assert boxes == [unturned_box(Box(1, 2, 5, 9), found, 30, 20)]


@needs_lfw
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_turned_photo_is_named_under_its_turn_and_its_box_is_on_the_face(shipped, degrees):
    # Cropped to 250x210, so that a turn swaps width and height; PNG, so the pixels are exact.
    photo = Image.open(held_out_photo(BUSH, 1)).convert("RGB").crop((0, 20, 250, 230))
    upright = shipped.classify(encode(photo, "PNG"), MAX_PIXELS)
    assert upright.label == BUSH and upright.orientation == 0
    sent = photo.transpose(CLOCKWISE[degrees])  # no EXIF: nothing says it is turned
    result = shipped.classify(encode(sent, "PNG"), MAX_PIXELS)
    assert (result.label, result.orientation) == (BUSH, degrees)
    assert (result.width, result.height) == sent.size
    (face,) = result.faces
    assert 0 <= face.box.left < face.box.right <= sent.width and 0 <= face.box.top < face.box.bottom <= sent.height
    # The box in the image as sent, turned upright, holds exactly the face the upright photo has.
    found = turned(np.asarray(sent.crop(face.box)), degrees)
    assert np.array_equal(found, np.asarray(photo.crop(upright.faces[0].box)))


@needs_lfw
def test_an_upright_photo_reports_orientation_0_after_one_detector_pass(shipped, monkeypatch):
    passes = []
    detect = pipeline.detect_scored
    monkeypatch.setattr(pipeline, "detect_scored", lambda rgb, *a: passes.append(1) or detect(rgb, *a))
    result = shipped.classify(held_out_photo(BUSH, 1).read_bytes(), MAX_PIXELS)
    assert (result.label, result.orientation, len(passes)) == (BUSH, 0, 1)


def test_no_face_stays_no_face_with_orientation_0_after_all_four_turns(shipped, monkeypatch):
    passes = []
    detect = pipeline.detect_scored
    monkeypatch.setattr(pipeline, "detect_scored", lambda rgb, *a: passes.append(rgb.shape) or detect(rgb, *a))
    result = shipped.classify((SAMPLES / "china.jpg").read_bytes(), MAX_PIXELS)
    assert (result.label, result.orientation, result.faces) == (NO_FACE, 0, [])
    assert (result.width, result.height) == (640, 427)
    # Upright at full size in colour, then the three turns of one grey copy shrunk to TURNED_PIXELS.
    (h, w, _), *turns = passes
    assert (h, w) == (427, 640) and len(turns) == 3
    small = turns[2]  # turned 180: the shrunk copy's own shape; 90 and 270 exchange its axes
    sideways = (small[1], small[0])
    assert small[0] * small[1] <= pipeline.TURNED_PIXELS and turns == [sideways, sideways, small]


def test_the_turns_of_a_large_photo_are_scanned_on_one_small_copy(shipped, monkeypatch):
    """A 1920x1080 photo with no face: one full-size scan, then three at most TURNED_PIXELS (about a third of
    the size), so that no face costs about one scan, not four (bench/bench_classify.py prices it)."""
    passes = []
    detect = pipeline.detect_scored
    monkeypatch.setattr(pipeline, "detect_scored", lambda rgb, *a: passes.append(rgb.shape[:2]) or detect(rgb, *a))
    data = encode(Image.open(SAMPLES / "china.jpg").convert("RGB").resize((1920, 1080)), "JPEG")
    result = shipped.classify(data, MAX_PIXELS)
    assert result.label == NO_FACE
    assert passes[0] == (1080, 1920) and len(passes) == 4
    assert all(h * w <= pipeline.TURNED_PIXELS for h, w in passes[1:])


@needs_lfw
@pytest.mark.parametrize("degrees", [90, 270])
def test_a_turned_face_in_a_large_photo_is_found_on_the_small_copy_and_boxed_at_full_size(shipped, degrees):
    face = Image.open(held_out_photo(BUSH, 1)).convert("RGB").resize((500, 500))  # a face of ~250 px
    canvas = Image.open(SAMPLES / "china.jpg").convert("RGB").resize((1920, 1080))
    canvas.paste(face, (900, 300))
    upright = shipped.classify(encode(canvas, "PNG"), MAX_PIXELS)
    assert (upright.label, upright.orientation) == (BUSH, 0)
    sent = canvas.transpose(CLOCKWISE[degrees])
    result = shipped.classify(encode(sent, "PNG"), MAX_PIXELS)
    assert (result.label, result.orientation) == (BUSH, degrees)
    box = result.faces[0].box
    # The box, found on the shrunk copy, lies on the face in the full-size image as sent: within a tenth of its
    # size (the detector's windows are 1.2x apart, on a copy a third of the size).
    back = unturned_box(upright.faces[0].box, degrees, sent.width, sent.height)  # in the pixels as sent
    tolerance = 0.1 * (back.right - back.left)
    assert all(abs(a - b) <= tolerance for a, b in zip(box, back, strict=True)), (box, back)


@needs_lfw
def test_small_face_in_a_1080p_photo_is_found_at_full_resolution(shipped, people):
    rng = random.Random(5)
    data, where = scenes.pasted(Image.open(people[BUSH][-2]), 60, rng)
    result = shipped.classify(data, MAX_PIXELS)
    assert (result.width, result.height) == (1920, 1080)
    assert result.label == BUSH
    left, top, right, bottom = result.faces[0].box
    assert 40 <= right - left <= 100 and where.left <= left < right <= where.right
    assert where.top <= top < bottom <= where.bottom


@needs_lfw
@pytest.mark.timeout(120)
def test_24_megapixel_photo(shipped, people):
    scene = Image.new("RGB", (6000, 4000), (90, 110, 100))
    scene.paste(Image.open(people[POWELL][-3]).resize((1000, 1000)), (2500, 1500))
    result = shipped.classify(encode(scene, "JPEG", quality=85), MAX_PIXELS)
    assert result.label == POWELL and (result.width, result.height) == (6000, 4000)


@needs_lfw
def test_several_faces_one_entry_each_largest_first(people):
    models = load_dlib_models()
    a = Image.open(people[BUSH][-4]).convert("RGB")
    b = Image.open(people[POWELL][-4]).convert("RGB").resize((160, 160))
    canvas = Image.new("RGB", (500, 300), (200, 200, 200))
    canvas.paste(b, (10, 70))
    canvas.paste(a, (240, 25))
    boxes = detect_faces(np.asarray(canvas), models)
    assert len(boxes) == 2
    assert boxes[0].area > boxes[1].area and boxes[0].left >= 240 and boxes[1].right <= 170


@needs_lfw
def test_train_command_writes_an_artifact_that_loads(tmp_path, people):
    gal = tmp_path / "gallery"
    for person in ("Colin_Powell", "Hugo_Chavez"):
        (gal / person).mkdir(parents=True)
        for f in people[display_name(person)][:4]:
            (gal / person / f.name).symlink_to(f)
    from worker.cli import main

    out = tmp_path / "m.npz"
    result = CliRunner().invoke(main, ["train", "--people", str(gal), "--out", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    model = load_classifier(str(out))
    assert model.model.main.labels == [POWELL, "Hugo Chavez"]
    assert model.version in result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["people"] == {POWELL: 4, "Hugo Chavez": 4}


@needs_lfw
@pytest.mark.slow  # `worker evaluate` starts and stops a `worker serve` process (9.6 s)
@pytest.mark.timeout(300)
def test_evaluate_command_through_a_real_worker(tmp_path, people):
    """Train with a held-out split on a tiny gallery, then `worker evaluate` it over gRPC."""
    gal = tmp_path / "gallery"
    counts = {"George_W_Bush": 6, "Colin_Powell": 6, "Tony_Blair": 3, "Hugo_Chavez": 3, "Ariel_Sharon": 3}
    for person, n in counts.items():
        (gal / person).mkdir(parents=True)
        for f in people[display_name(person)][:n]:
            (gal / person / f.name).symlink_to(f)
    from worker.cli import main

    out = tmp_path / "m.npz"
    trained = CliRunner().invoke(main, [
        "train", "--people", str(gal), "--person", "George_W_Bush", "--person", "Colin_Powell",
        "--negatives", str(gal), "--hold-out", "0.34", "--hold-out-negatives", "1", "--out", str(out),
        "--no-cache"])
    assert trained.exit_code == 0, trained.output
    split_meta = json.loads(out.with_suffix(".json").read_text())["split"]
    assert {k: len(v) for k, v in split_meta["test_people"].items()} == {BUSH: 2, POWELL: 2}
    assert len(split_meta["test_negatives"]) == 1

    report = tmp_path / "report.md"
    result = CliRunner().invoke(main, ["evaluate", "--model", str(out), "--data", str(gal),
                                       "--report", str(report), "--record"])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    for title in ("ImageWorker.Classify", "turned 90°", "turned 180°", "turned 270°", "1920x1080",
                  "portrait's subject", "RecognizeFace", "eigenfaces", "prototype"):
        assert title in text
    first = text.split("###")[1]
    assert "known people named right: **1.0000** (4 photos)" in first
    assert "never-seen people answered `unknown`: **1.0000** (3 photos)" in first
    sideways = text.split("###")[2]
    assert "turned 90°" in sideways and "known people named right: **1.0000** (4 photos)" in sideways
    assert "orientation 90 reported for 7 of the 7 photos with a face" in sideways
    recorded = json.loads(out.with_suffix(".json").read_text())["evaluation"]
    assert recorded["model"]["known_accuracy"] == 1.0 and recorded["legacy"]["known_photos"] == 4
    load_classifier(str(out))  # recording leaves the checksummed arrays alone


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_evaluate_spreads_its_calls_over_every_worker_process():
    """`worker evaluate --processes 2` has both processes work: one channel to a shared port is one
    connection, which the kernel gives to one process (it ran at half speed)."""
    from tests.support.images import jpeg
    from worker.api import imageworker_v1_pb2, imageworker_v1_pb2_grpc
    from worker.faces.training.evaluate import running_worker

    request = imageworker_v1_pb2.RotateRequest(image=jpeg(16, 8), degrees=90)
    with running_worker(None, processes=2) as channel:
        answered = {imageworker_v1_pb2_grpc.ImageWorkerStub(channel()).Rotate(request, timeout=30).worker
                    for _ in range(4)}
    assert len(answered) == 2, answered


def test_main_face_is_the_central_one_among_equally_large_faces():
    side = Box(6, 121, 94, 209)  # 88x88, at the edge
    centre = Box(83, 93, 171, 180)  # 88x87, in the middle: the subject
    small = Box(200, 10, 240, 50)
    assert main_face_first([side, centre, small], 250, 250) == [centre, side, small]
    big = Box(0, 0, 150, 150)
    assert main_face_first([big, centre], 250, 250) == [big, centre]  # clearly larger wins


@needs_lfw
def test_concurrent_calls_from_several_threads_agree_with_sequential_ones(shipped, people):
    from concurrent.futures import ThreadPoolExecutor

    photos = [f.read_bytes() for f in people[BUSH][-3:] + people[POWELL][-3:]] + [encode(
        Image.new("RGB", (120, 90), (10, 200, 30)), "PNG")]
    thumbs = [old_client_thumbnail(Image.open(f)) for f in people[POWELL][-2:]]
    alone = [shipped.classify(p, MAX_PIXELS) for p in photos] + [shipped.classify_legacy(t) for t in thumbs]
    jobs = [("c", p) for p in photos] + [("l", t) for t in thumbs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda j: shipped.classify(j[1], MAX_PIXELS) if j[0] == "c"
                                 else shipped.classify_legacy(j[1]), jobs * 2))
    assert together == alone * 2


def test_subject_label_picks_the_face_at_the_portraits_centre():
    from worker.api import imageworker_v1_pb2 as v1
    from worker.faces.training.evaluate import subject_label

    reply = v1.ClassifyResponse(label="unknown", faces=[
        v1.Face(box=v1.Box(left=100, top=100, right=190, bottom=190), label="unknown"),
        v1.Face(box=v1.Box(left=180, top=110, right=260, bottom=190), label=BUSH),
    ])
    assert subject_label(reply, Box(120, 80, 320, 280)) == BUSH
    assert subject_label(reply, Box(1000, 800, 1200, 1000)) == NO_FACE


def test_evaluate_without_data_is_a_usage_error_naming_both_sources(monkeypatch):
    from worker.cli import main

    monkeypatch.delenv("IMAGEBATCH_LFW", raising=False)
    result = CliRunner().invoke(main, ["evaluate"])
    assert result.exit_code == 2
    assert "--data" in result.output and "IMAGEBATCH_LFW" in result.output
    for command in ("train", "evaluate"):
        assert "shared" not in CliRunner().invoke(main, [command, "--help"]).output


class _ScriptedDetector:
    """dlib's detector's ``run`` as a script: a face (at ``score``) only in the upright image; the upsampling
    of every run noted."""

    def __init__(self, upright: np.ndarray, score: float | None) -> None:
        self.upright, self.score, self.upsampled = upright, score, []

    def run(self, image, upsample, adjust):
        self.upsampled.append(upsample)
        if self.score is not None and image.shape == self.upright.shape and np.array_equal(image, self.upright):
            return [dlib.rectangle(60, 60, 159, 159)], [self.score], [0]
        return [], [], []


@pytest.mark.parametrize(("upright_score", "runs"), [
    (None, [0, 1] * 4),  # no face yet: each turn, like the upright image, also at 2x
    (0.5, [0, 0, 0, 0]),  # a weak upright face in hand: the turns at 1x only
    (1.5, [0]),  # a sure upright face: no turn at all
], ids=["none", "weak-upright", "sure-upright"])
def test_a_small_images_turns_are_upsampled_only_while_no_face_is_in_hand(upright_score, runs):
    rgb = np.random.default_rng(0).integers(0, 255, (250, 240, 3), dtype=np.uint8)
    detector = _ScriptedDetector(rgb, upright_score)
    found = pipeline.search_turns(rgb, pipeline.DlibModels(detector, None, None))
    assert detector.upsampled == runs
    assert found == (None if upright_score is None else (0, [Box(60, 60, 160, 160)]))
