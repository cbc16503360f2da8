"""Classification metrics as plain dicts and markdown tables (no plotting, no estimators)."""

from __future__ import annotations

from collections import Counter


def per_label(truth: list[str], pred: list[str], labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per label (0 where undefined)."""
    out = {}
    for lab in labels:
        tp = sum(t == lab and p == lab for t, p in zip(truth, pred, strict=True))
        n_pred = sum(p == lab for p in pred)
        n_true = sum(t == lab for t in truth)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[lab] = {"precision": precision, "recall": recall, "f1": f1, "support": n_true}
    return out


def confusion(truth: list[str], pred: list[str], labels: list[str]) -> list[list[int]]:
    """Rows: true label; columns: predicted label, both in ``labels`` order."""
    counts = Counter(zip(truth, pred, strict=True))
    return [[counts[(t, p)] for p in labels] for t in labels]


def summary(truth: list[str], pred: list[str], known: list[str], unknown: str) -> dict[str, float]:
    """Headline rates: known people named right, never-seen people answered ``unknown``."""
    k = [(t, p) for t, p in zip(truth, pred, strict=True) if t in known]
    n = [p for t, p in zip(truth, pred, strict=True) if t == unknown]
    return {
        "known_accuracy": sum(t == p for t, p in k) / len(k) if k else float("nan"),
        "known_photos": len(k),
        "unknown_rate": sum(p == unknown for p in n) / len(n) if n else float("nan"),
        "never_seen_photos": len(n),
    }


def markdown(title: str, truth: list[str], pred: list[str], labels: list[str], known: list[str],
             unknown: str) -> str:
    """A section with the headline rates, the per-label table and the confusion matrix."""
    s = summary(truth, pred, known, unknown)
    lines = [f"### {title}", ""]
    lines.append(f"- known people named right: **{s['known_accuracy']:.4f}** ({s['known_photos']} photos)")
    if s["never_seen_photos"]:
        lines.append(f"- never-seen people answered `{unknown}`: **{s['unknown_rate']:.4f}** "
                     f"({s['never_seen_photos']} photos)")
    lines += ["", "| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for lab, m in per_label(truth, pred, labels).items():
        lines.append(f"| {lab} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "confusion (rows: truth, columns: answer)", "",
              "| truth \\ answer | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for lab, row in zip(labels, confusion(truth, pred, labels), strict=True):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
