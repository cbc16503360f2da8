"""Pick the rows the HTML galleries show and make their thumbnails, capped so big runs stay small."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from batch import store
from batch.report.table import Results, locate_input, locate_output
from batch.report.thumbs import ThumbnailError, orientation, thumbnail
from batch.store import Uri

ROTATE_CAP = 24
LABELS_CAP = 12
PER_LABEL_CAP = 6
FAILED_CAP = 200
# A thumbnail is not worth reading a huge file for; the gallery says why it is missing.
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass
class Thumb:
    """One embedded image (a data: URI) or the reason there is none."""

    uri: str | None
    problem: str | None = None
    orientation: int = 1  # the file's EXIF orientation (shown when the thumbnail is of the stored pixels)


@dataclass
class Galleries:
    rotated: list[dict] = field(default_factory=list)
    rotated_total: int = 0
    by_label: list[dict] = field(default_factory=list)
    classified_total: int = 0
    failed: list[dict] = field(default_factory=list)
    failed_total: int = 0
    caps: dict = field(default_factory=dict)


def parse_faces(text: str) -> list[dict]:
    """The ``faces`` column: a JSON list of {"box": [l, t, r, b], label, score}; anything else is skipped."""
    if not text:
        return []
    try:
        faces = json.loads(text)
    except json.JSONDecodeError:
        return []
    out = []
    for face in faces if isinstance(faces, list) else []:
        if not isinstance(face, dict):
            continue
        box = face.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            continue
        out.append({"box": box, "label": str(face.get("label", "")), "score": face.get("score")})
    return out


def make_thumb(path: Path | Uri, boxes: list[list[float]] = (), stored: bool = False) -> Thumb:
    """A data: URI of ``path``'s thumbnail (``stored``: its pixels as stored, see ``thumbnail``), or why it could
    not be made. ``path`` may be an object in a store (one GET)."""
    try:
        if isinstance(path, Uri):
            data = store.read(path, MAX_FILE_BYTES)
            if len(data) > MAX_FILE_BYTES:
                return Thumb(None, f"object over {MAX_FILE_BYTES // 2**20} MiB")
        elif path.stat().st_size > MAX_FILE_BYTES:
            return Thumb(None, f"file over {MAX_FILE_BYTES // 2**20} MiB")
        else:
            data = path.read_bytes()
    except OSError as err:
        return Thumb(None, f"cannot read {'object' if isinstance(path, Uri) else 'file'}: {err.strerror or err}")
    try:
        jpeg = thumbnail(data, boxes=boxes, stored=stored)
    except ThumbnailError as err:
        return Thumb(None, str(err))
    return Thumb("data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"), orientation=orientation(data))


def collect(results: Results) -> Galleries:
    """The rows to show, with thumbnails read from the inputs and outputs the table names."""
    rows = results.rows
    g = Galleries(caps={"rotated": ROTATE_CAP, "labels": LABELS_CAP, "per_label": PER_LABEL_CAP,
                        "failed": FAILED_CAP})

    rotated = rows[(rows["op"] == "rotate") & (rows["status"] == "ok")]
    g.rotated_total = len(rotated)
    for r in rotated.head(ROTATE_CAP).itertuples(index=False):
        part = results.parts[r.part]
        g.rotated.append({
            "id": r.id, "path": r.path, "output": r.output, "rotation": r.rotation, "turned": r.turned,
            "decided_by": r.decided_by,
            # The input as stored (its pixels, before any EXIF orientation) beside the output as written.
            "before": make_thumb(locate_input(part, r.path), stored=True),
            "after": make_thumb(locate_output(part, r.output)) if r.output else Thumb(None, "no output"),
        })

    classified = rows[(rows["op"] == "classify") & (rows["status"] == "ok")]
    g.classified_total = len(classified)
    counts = classified["label"].value_counts()
    # Most common labels first; ties by name so the page is the same every time.
    labels = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    for label, count in labels[:LABELS_CAP]:
        items = []
        for r in classified[classified["label"] == label].head(PER_LABEL_CAP).itertuples(index=False):
            faces = parse_faces(r.faces)
            items.append({
                "id": r.id, "path": r.path, "confidence": r.confidence, "faces": faces,
                "thumb": make_thumb(locate_input(results.parts[r.part], r.path), [f["box"] for f in faces]),
            })
        g.by_label.append({"label": label, "count": int(count), "items": items})
    g.caps["labels_total"] = len(labels)

    failed = rows[rows["status"] != "ok"]
    g.failed_total = len(failed)
    g.failed = [
        {"id": r.id, "path": r.path, "op": r.op, "error": r.error, "attempts": r.attempts, "worker": r.worker}
        for r in failed.head(FAILED_CAP).itertuples(index=False)
    ]
    return g
