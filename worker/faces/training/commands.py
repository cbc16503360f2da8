"""`worker train` and `worker evaluate`: thin click layers over ``train`` and ``evaluate``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from worker.faces import artifact
from worker.faces.training.dataset import LFW_ENV, gallery, people_folders, split

_dir = click.Path(exists=True, file_okay=False, path_type=Path)
# The parts of `worker evaluate` (``evaluate.evaluate``); the baseline runs in-process, no worker.
GROUPS = ("model", "turned", "legacy", "small", "baseline")


@click.command()
@click.option("--people", "people_dir", type=_dir, required=True,
              help="Folder with one sub-folder of photos per person to recognise (LFW's layout).")
@click.option("--person", "persons", multiple=True,
              help="Only these sub-folders of --people are people (repeatable; default: all of them).")
@click.option("--negatives", "negatives_dir", type=_dir, default=None,
              help="Folder of other people's folders, learnt as 'unknown'; may be --people itself, "
                   "then its folders not chosen with --person are the negatives.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Artifact to write: OUT.npz (arrays) and OUT.json (metadata).")
@click.option("--hold-out", type=click.FloatRange(0, 0.9), default=0.0, show_default=True,
              help="Share of each person's photos kept out of training for `worker evaluate` (stratified).")
@click.option("--hold-out-negatives", type=click.IntRange(0), default=0, show_default=True,
              help="Whole negative people kept out of training for `worker evaluate`.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the cross-validation.")
@click.option("--no-cache", is_flag=True, help="Do not cache embeddings in ~/.cache/imagebatch (IMAGEBATCH_CACHE).")
def train(people_dir: Path, persons: tuple[str, ...], negatives_dir: Path | None, out: Path,
          hold_out: float, hold_out_negatives: int, seed: int, no_cache: bool) -> None:
    """Train a face model on folder-per-person galleries.

    \b
    The shipped model (worker/models/faces.npz) was made with, IMAGEBATCH_LFW
    naming LFW's lfw-deepfunneled folder:
      worker train --people "$IMAGEBATCH_LFW" \\
        --person George_W_Bush --person Colin_Powell \\
        --negatives "$IMAGEBATCH_LFW" \\
        --hold-out 0.4 --hold-out-negatives 2 --seed 0 --out worker/models/faces.npz
    """
    from worker.faces.training.train import train as run

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    people = people_folders(people_dir, list(persons)) if persons else gallery(people_dir)
    negatives = {}
    if negatives_dir is not None:
        negatives = {k: v for k, v in gallery(negatives_dir).items() if k not in people}
    if hold_out_negatives > len(negatives):
        raise click.BadParameter(f"only {len(negatives)} negative people to hold out from",
                                 param_hint="--hold-out-negatives")
    parts = split(people, negatives, hold_out, hold_out_negatives, seed)
    meta = {"split": {"test_fraction": hold_out, "negative_people_held_out": hold_out_negatives,
                      "seed": seed, **parts.summary(people_dir)}}
    model = run(parts.train_people, parts.train_negatives, out, seed=seed, extra_meta=meta,
                cache=not no_cache, progress=lambda m: click.echo(m, err=True))
    npz, js = artifact.paths(out)
    click.echo(f"wrote {npz} ({npz.stat().st_size:,} bytes) and {js.name}: version {model.version}, "
               f"labels {', '.join(model.main.labels)}")
    click.echo(json.dumps(model.meta["validation"], indent=1))


@click.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Artifact (.npz) to evaluate; default: the shipped one.")
@click.option("--data", type=_dir, envvar=LFW_ENV, show_envvar=True, default=None,
              help="The gallery the model was trained from (for the shipped model: LFW's lfw-deepfunneled).")
@click.option("--processes", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes to start for the evaluation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the small-face scenes and baseline.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the markdown report to this file.")
@click.option("--record", is_flag=True, help="Store the headline figures in the model's .json (key 'evaluation').")
@click.option("--only", "only", multiple=True, type=click.Choice(GROUPS),
              help="Only these evaluations (repeatable; default: all).")
def evaluate(model: Path | None, data: Path | None, processes: int, seed: int, report: Path | None,
             record: bool, only: tuple[str, ...]) -> None:
    """Evaluate a model on the split it held out, through a real `worker serve` on loopback.

    Prints precision/recall/F1 per label, the confusion matrix and the rate of
    `unknown` answers for never-seen people, for the model, the same photos
    turned by 90, 180 and 270 degrees, the same faces small in 1920x1080
    scenes, the legacy 37x50 path and an eigenfaces baseline.
    """
    from worker.faces.training.evaluate import evaluate as run
    from worker.faces.training.evaluate import record as keep
    from worker.faces.training.evaluate import report as render

    if data is None:
        raise click.UsageError(f"no evaluation data: give the gallery with --data DIR or set {LFW_ENV}")
    try:
        results = run(model, data, processes, seed, only or GROUPS)
    except (artifact.ModelError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    text = render(results)
    click.echo(text)
    if report:
        report.write_text(text)
    if record:
        keep(model, results, " ".join(["worker", *sys.argv[1:]]))
