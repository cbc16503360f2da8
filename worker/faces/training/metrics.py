"""scikit-learn's classification metrics as plain dicts, and as markdown tables."""

from __future__ import annotations

from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def per_label(truth: list[str], pred: list[str], labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per label (0 where undefined)."""
    p, r, f1, n = precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0.0)
    return {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(n[i])}
            for i, lab in enumerate(labels)}


def confusion(truth: list[str], pred: list[str], labels: list[str]) -> list[list[int]]:
    """Rows: true label; columns: predicted label, both in ``labels`` order."""
    return confusion_matrix(truth, pred, labels=labels).tolist()


def summary(truth: list[str], pred: list[str], known: list[str], unknown: str) -> dict[str, float]:
    """Headline rates: known people named right, never-seen people answered ``unknown``."""
    k = [(t, p) for t, p in zip(truth, pred, strict=True) if t in known]
    n = [(t, p) for t, p in zip(truth, pred, strict=True) if t == unknown]
    return {
        "known_accuracy": float(accuracy_score(*zip(*k, strict=True))) if k else float("nan"),
        "known_photos": len(k),
        "unknown_rate": float(accuracy_score(*zip(*n, strict=True))) if n else float("nan"),
        "never_seen_photos": len(n),
    }


def markdown(title: str, truth: list[str], pred: list[str], labels: list[str], known: list[str],
             unknown: str, notes: tuple[str, ...] = ()) -> str:
    """A section with the headline rates (then ``notes``, one bullet each), the per-label table and
    the confusion matrix."""
    s = summary(truth, pred, known, unknown)
    lines = [f"### {title}", ""]
    lines.append(f"- known people named right: **{s['known_accuracy']:.4f}** ({s['known_photos']} photos)")
    if s["never_seen_photos"]:
        lines.append(f"- never-seen people answered `{unknown}`: **{s['unknown_rate']:.4f}** "
                     f"({s['never_seen_photos']} photos)")
    lines += [f"- {n}" for n in notes]
    lines += ["", "| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for lab, m in per_label(truth, pred, labels).items():
        lines.append(f"| {lab} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "confusion (rows: truth, columns: answer)", "",
              "| truth \\ answer | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for lab, row in zip(labels, confusion(truth, pred, labels), strict=True):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
