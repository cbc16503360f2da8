"""Reading a manifest: a CSV streamed row by row.

Problems with the whole file (not UTF-8, not CSV, no ``path``/``op`` column)
raise ``ManifestError`` naming the line; problems with one row are attached
to that row as ``Row.error`` so the rest of the batch goes on. Nothing here
opens the images: checks that need the file system happen when a row runs.
A ``path`` or ``output`` that is an object-store URI (batch/store.py) stays one, normalised: it is not
joined to a folder, and an output URI is allowed outside --out since it is named explicitly.
"""

from __future__ import annotations

import codecs
import csv
import functools
import os
import posixpath
import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batch.durable import within
from batch.errors import BatchError
from batch.results import is_bookkeeping
from batch.store import Uri, is_uri, parse, parse_object

REQUIRED = ("path", "op")
COLUMNS = ("path", "op", "rotation", "output", "id")
OPS = ("rotate", "classify")
INT64_MAX = 2**63 - 1


class ManifestError(BatchError):
    """A problem with the whole manifest: the run stops before any work (exit code 2)."""

    def __init__(self, manifest: Path | str, line: int | None, message: str) -> None:
        self.manifest = Path(manifest)
        self.line = line
        self.message = message
        where = f"{manifest}, line {line}" if line else str(manifest)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Row:
    """One manifest row: the values as written plus what they resolve to.

    ``error`` is set when the row itself is wrong; the run records it as the
    row's result without calling a worker.
    """

    line: int  # physical line the record starts on (1-based, header is line 1 or later)
    id: str
    path: str
    op: str
    rotation: str
    output: str
    input_path: Path | Uri | None = None  # absolute, normalised (symlinks not resolved); or a normalised URI
    degrees: int | None = None  # the quarter turn counter-clockwise, 0, 90, 180 or 270 (-90 is 270); None for "auto"
    output_path: Path | Uri | None = None  # absolute, inside --out, or a URI the manifest names; rotate rows only
    error: str | None = None
    format: str = ""  # the format to write (Pillow's name), from the output's extension or --format; "": keep
    # ``input_path`` with its links resolved, as the run's index stored it (batch/index.py): the row's way is
    # chosen on it without an lstat of its own (None: not known, resolved when needed).
    input_real: str | None = field(default=None, compare=False, repr=False)

    @property
    def auto(self) -> bool:
        """Rotation ``auto``: the worker makes the image upright (EXIF orientation, else its faces)."""
        return self.op == "rotate" and self.rotation.lower() == AUTO


AUTO = "auto"
# The formats the worker writes, by Pillow's name: the extension a default output gets, and every extension that
# names the format in an output cell.
FORMAT_EXTENSIONS = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "PNG": (".png",), "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"), "BMP": (".bmp", ".dib"), "GIF": (".gif",),
}
_FORMAT_OF = {ext: name for name, exts in FORMAT_EXTENSIONS.items() for ext in exts}
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


def format_name(text: str) -> str | None:
    """Pillow's name of a format given as --format (any case; jpg and tif too), or None if it is none we write."""
    name = FORMAT_ALIASES.get(text.upper(), text.upper())
    return name if name in FORMAT_EXTENSIONS else None


@dataclass(frozen=True)
class Places:
    """Where a run's files are: inputs relative to the manifest's folder (``base``), outputs under ``out_dir``,
    default outputs named by ``template`` (``--name``) or after their input."""

    manifest: Path
    base: Path
    out_dir: Path
    template: str | None = None
    format: str | None = None  # --format: convert every rotated output (Pillow's name)
    rotation: str | None = None  # --rotation: for rows whose rotation cell is empty
    store: Uri | None = None  # --out as a URI (batch/remote.py): outputs under out_dir are objects under it


NAME_FIELDS = ("folder", "stem", "ext", "rotation", "id")
# Values of the real types (all text: {rotation} is "auto" too) that a template is tried on before any work:
# a spec that formats these formats every row's.
_SAMPLE_NAMES = ({"folder": "", "stem": "photo", "ext": ".jpg", "rotation": AUTO, "id": "1"},
                 {"folder": "a/b", "stem": "p", "ext": ".png", "rotation": "90", "id": "row-2"})
# A width or precision in a spec (digits in it) above this makes no file name (NAME_MAX is 255) and could ask
# the formatter for gigabytes: refused before anything is formatted.
_SPEC_NUMBER_MAX = 255
_SPEC_NUMBER = re.compile(r"\d+")
_NAME_MAX = 4096  # PATH_MAX: a longer name is no path on any file system we write to


def check_template(template: str) -> str | None:
    """Why a --name template cannot work (an unknown field, bad braces, a spec the fields' values do not take or
    too wide a spec), or None: checked by formatting it with values of the real types."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"--name {template!r} is not a valid template: {e}"
    fields = [(f, spec) for _text, f, spec, _conv in parts if f is not None]
    unknown = [f for f, _spec in fields if f not in NAME_FIELDS]
    if unknown:
        return (f"--name {template!r} has unknown field {{{unknown[0]}}}; "
                f"the fields are {', '.join('{' + f + '}' for f in NAME_FIELDS)}")
    if not fields:
        return f"--name {template!r} names every output the same: use fields such as {{stem}} and {{rotation}}"
    if "\x00" in template:
        return f"--name {template!r} contains a NUL byte, which no file name can"
    for f, spec in fields:
        if "{" in spec:  # a nested field: a row's value (its id) would set the width
            return f"--name {template!r}: the format of {{{f}}} has a field inside it ({spec!r})"
        if any(len(n) > 3 or int(n) > _SPEC_NUMBER_MAX for n in _SPEC_NUMBER.findall(spec)):
            return (f"--name {template!r}: the format of {{{f}}} ({spec!r}) asks for a width or precision over "
                    f"{_SPEC_NUMBER_MAX}, longer than any file name")
    for values in _SAMPLE_NAMES:
        try:
            name = template.format(**values)
        except (ValueError, TypeError, IndexError, KeyError) as e:
            return (f"--name {template!r} does not format: {e} (every field is text; {{rotation}} is 0, 90, "
                    "180, 270 or auto)")
        if len(name) > _NAME_MAX:
            return f"--name {template!r} gives names of {len(name):,} characters, over the {_NAME_MAX:,} of a path"
    return None


def read_rows(manifest: Path, out_dir: Path, template: str | None = None, fmt: str | None = None,
              rotation: str | None = None, store: Uri | None = None, *, base: Path | None = None) -> Iterator[Row]:
    """Stream the rows of ``manifest``; relative paths resolve against ``base`` (default: its folder), outputs
    against ``out_dir``,
    default outputs named by ``template`` (see ``check_template``; checked by the caller), converted to ``fmt``
    (Pillow's name) when given; ``rotation`` is the rotation of rows that leave theirs empty; with ``store``
    (--out as a URI, ``out_dir`` its local cache) outputs are objects under it.

    Raises ManifestError for file-level problems (the header is checked before
    the first row is yielded; a later undecodable or malformed line raises
    when reached).
    """
    manifest = Path(manifest)
    places = Places(manifest, Path(os.path.abspath(base or manifest.parent)), Path(os.path.abspath(out_dir)),
                    template, fmt, rotation, store)
    try:
        f = open(manifest, "rb")  # noqa: SIM115 - closed in finally; bytes so decoding errors name a line
    except OSError as e:
        raise ManifestError(manifest, None, f"cannot read the manifest: {e.strerror}") from None
    try:
        reader = csv.reader(_decoded_lines(f, manifest), strict=True)
        header, header_line = _header(reader, manifest)
        index = {name: i for i, name in enumerate(header)}
        previous_end = header_line
        for record in _records(reader, manifest):
            start, previous_end = previous_end + 1, reader.line_num
            if not any(field.strip() for field in record):
                continue  # blank line (or only commas)
            yield _row(record, index, len(header), start, places)
    finally:
        f.close()


def _decoded_lines(f: Iterable[bytes], manifest: Path) -> Iterator[str]:
    """Decode line by line so a non-UTF-8 byte is reported with its line number."""
    for number, raw in enumerate(f, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(
                manifest, number,
                f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                "save the manifest as UTF-8 CSV",
            ) from None


def _records(reader, manifest: Path) -> Iterator[list[str]]:
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ManifestError(manifest, reader.line_num, f"not valid CSV: {e}") from None
        yield record


def _header(reader, manifest: Path) -> tuple[list[str], int]:
    for record in _records(reader, manifest):
        if not any(field.strip() for field in record):
            continue
        line = reader.line_num
        header = [field.strip().lower() for field in record]
        seen: set[str] = set()
        for name in header:
            if name and name in seen:
                raise ManifestError(manifest, line, f"column {name!r} appears twice in the header")
            seen.add(name)
        missing = [c for c in REQUIRED if c not in seen]
        if missing:
            has = ", ".join(repr(h) for h in header if h) or "nothing"
            raise ManifestError(
                manifest, line,
                f"missing required column{'s' if len(missing) > 1 else ''} "
                f"{' and '.join(missing)}: the header has {has}; the first line must be a header "
                f"naming the columns ({', '.join(COLUMNS)}; path and op required)",
            )
        return header, line
    raise ManifestError(manifest, None, "the manifest is empty: expected a header line such as 'path,op,rotation'")


def _row(record: list[str], index: dict[str, int], width: int, line: int, places: Places) -> Row:
    def get(name: str) -> str:
        i = index.get(name)
        return record[i].strip() if i is not None and i < len(record) else ""

    values = {name: get(name) for name in COLUMNS}
    op = values["op"].lower()
    rotation = values["rotation"] or (places.rotation or "" if op == "rotate" else "")
    # Built once, when all is known (a dataclass ``replace`` per step cost more than the checks).
    fields = dict(line=line, id=values["id"] or str(line), path=values["path"], op=op, rotation=rotation,
                  output=values["output"])

    def failed(message: str, **known) -> Row:
        return Row(**fields, **known, error=message)

    path = fields["path"]
    if len(record) > width:
        return failed(f"line has {len(record)} fields but the header has {width} (unquoted comma?)")
    if not path:
        return failed("path is empty")
    for name in ("path", "output"):
        if "\x00" in values[name]:  # no file system takes one; os functions would raise ValueError
            return failed(f"{name} contains a NUL byte")
    if is_uri(path):
        try:
            input_path = parse_object(path)
        except ValueError as e:
            return failed(f"path {e}")
    else:
        input_path = Path(os.path.normpath(os.path.join(places.base, path)))
    if not op:
        return failed(f"op is empty (expected {' or '.join(OPS)})", input_path=input_path)
    if op not in OPS:
        return failed(f"unknown op {_quoted(values['op'])!r} (expected {' or '.join(OPS)})", input_path=input_path)
    if op == "classify":
        return Row(**fields, input_path=input_path)
    auto = rotation.lower() == AUTO
    degrees, problem = (None, None) if auto else parse_rotation(rotation)
    if problem:
        return failed(problem, input_path=input_path)
    output = fields["output"]
    output_path, problem = output_location(output, input_path, degrees, fields["id"], places)
    if problem:
        return failed(problem, input_path=input_path)
    if output:
        fmt = _FORMAT_OF.get(output_path.suffix.lower())
        if fmt is None:
            return failed(f"output {_quoted(output)!r} has extension {output_path.suffix}, which names no format "
                          f"rotate writes ({', '.join(e[0] for e in FORMAT_EXTENSIONS.values())})",
                          input_path=input_path)
    else:
        fmt = places.format or ""
    return Row(**fields, input_path=input_path, degrees=degrees, output_path=output_path, format=fmt)


def parse_rotation(text: str) -> tuple[int | None, str | None]:
    """The quarter turn counter-clockwise a manifest cell names, as 0, 90, 180 or 270 (the one place a rotation is
    normalised: -90 and 450 name 270 and 90): (turn, None) or (None, the problem)."""
    if not text:
        return None, "rotation is required for rotate (degrees counter-clockwise, a multiple of 90)"
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit():
        return None, (f"rotation {_quoted(text)!r} is not a whole number of degrees "
                      "(expected a multiple of 90, e.g. 90, -90, 180)")
    if len(digits.lstrip("0")) > len(str(INT64_MAX)) or abs(value := int(text)) > INT64_MAX:
        # Checked on the length first: int() refuses strings of over 4,300 digits with a ValueError.
        return None, f"rotation {_quoted(text)} is out of range"
    if value % 90:
        return None, f"rotation {value} is not a multiple of 90 degrees"
    return value % 360, None


def _quoted(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def output_location(output: str, input_path: Path | Uri, degrees: int, id_: str,
                    places: Places) -> tuple[Path | Uri | None, str | None]:
    """Where a rotate row writes: its ``output`` (a URI, or relative to ``out_dir``), else under
    ``out_dir/rotated`` by the template, else mirroring the input's path, or an input URI's ``bucket/key``
    (an input in several rows at different rotations gets ``RunIndex.name_rotations``'s names)."""
    out_dir, manifest = places.out_dir, places.manifest
    if output and is_uri(output):
        try:
            target = parse_object(output)
        except ValueError as e:
            return None, f"output {e}"
        if not target.writable:
            return None, f"output {_quoted(output)!r} is on {target.scheme}://, which is read-only"
    elif output:
        target = Path(os.path.normpath(os.path.join(out_dir, output)))  # an absolute output replaces out_dir
        if not _inside(target, out_dir) or target == out_dir:
            return None, f"output {output!r} escapes --out {out_dir} (outputs must stay inside it)"
    else:
        relative = input_path.relative if isinstance(input_path, Uri) else os.path.relpath(input_path, places.base)
        if relative.split(os.sep)[0] == os.pardir:
            # Outside the manifest's folder: mirror the absolute path under rotated/, never outside it.
            relative = str(input_path).lstrip(os.sep)
        if places.format is not None:  # --format: the default output takes the format's own extension
            relative = os.path.splitext(relative)[0] + FORMAT_EXTENSIONS[places.format][0]
        if places.template is not None:
            folder, name = os.path.split(relative)
            stem, ext = os.path.splitext(name)
            relative = places.template.format(folder=folder, stem=stem, ext=ext, rotation=_turn(degrees),
                                              id=id_).lstrip(os.sep)  # "{folder}/…" with no folder
        rotated = out_dir / "rotated"
        target = Path(os.path.normpath(rotated / relative))
        if not _inside(target, rotated) or target == rotated:
            return None, f"--name gives {relative!r}, which escapes {rotated} (default outputs stay inside it)"
    # Names first, folders resolved only on a match (realpath costs ~10 us a row): an output is renamed over
    # its path, so only its folder's links matter, and a folder linked back to --out is --out.
    shown = _quoted(output or str(target))
    local = not isinstance(target, Uri)  # the run's own files and the manifest are never in a store
    if local and is_bookkeeping(target.name) and os.path.realpath(target.parent) == os.path.realpath(out_dir):
        return None, f"output {shown!r} is {target.name}, one of the run's own files in --out"
    if local and target.name == manifest.name and os.path.realpath(target.parent) == os.path.realpath(manifest.parent):
        return None, f"output {shown!r} is the manifest itself"
    if output and not target.suffix:
        return None, f"output {shown!r} has no extension: name the image format with one (e.g. .jpg, .png)"
    if local and places.store is not None:
        try:
            target = parse(f"{places.store.rstrip('/')}/{os.path.relpath(target, out_dir)}")
        except ValueError as e:
            return None, f"output {e}"
    return target, None


def rotation_name(path: Path | Uri, degrees: int | None) -> Path | Uri:
    """The default output of an input rotated several ways in one manifest: ``photo.r90.jpg``, ``photo.auto.jpg``
    (an object under a URI --out likewise)."""
    turn = f"{'r' if degrees is not None else ''}{_turn(degrees)}"
    if isinstance(path, Uri):
        stem, ext = posixpath.splitext(path)
        return Uri(f"{stem}.{turn}{ext}")
    return path.with_name(f"{path.stem}.{turn}{path.suffix}")


def _turn(degrees: int | None) -> str:
    return AUTO if degrees is None else str(degrees)


@functools.lru_cache(maxsize=4096)
def real_folder(folder: str) -> str:
    """``os.path.realpath`` of a folder, once per run: rows share few folders, and realpath lstat's every
    component (measured: four realpaths a row were a third of the driver's CPU by reference)."""
    return os.path.realpath(folder)


def resolved(path: Path) -> str:
    """``os.path.realpath(path)``, its folder resolved once (``real_folder``); a link itself is followed."""
    if os.path.islink(path):
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    return os.path.join(real_folder(folder), name)


def _inside(path: Path, folder: Path) -> bool:
    return within(str(path), str(folder))

