"""Classification metrics, written once for every model we score."""

from __future__ import annotations

import numpy as np

NONE = "(unparsed)"


def classification_report(truth: list[str], predicted: list[str | None], labels: list[str]) -> dict:
    pred = [p if p in labels else NONE for p in predicted]
    columns = labels + [NONE]
    matrix = [[sum(1 for t, p in zip(truth, pred) if t == a and p == b) for b in columns] for a in labels]
    per_class, f1s = {}, []
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted_as = sum(row[i] for row in matrix)
        actual = sum(matrix[i])
        precision = tp / predicted_as if predicted_as else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": actual,
        }
        f1s.append(f1)
    correct = sum(1 for t, p in zip(truth, pred) if t == p)
    return {
        "accuracy": round(correct / len(truth), 4) if truth else 0.0,
        "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0,
        "unparsed": pred.count(NONE),
        "per_class": per_class,
        "confusion_matrix": {"rows": labels, "columns": columns, "counts": matrix},
    }


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1), linearly interpolated; 0.0 for no values."""
    return float(np.percentile(values, q * 100)) if len(values) else 0.0
