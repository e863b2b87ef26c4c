"""Results tables: per (setting, method) mean ± standard error over images; markdown + CSV."""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

import numpy as np

__all__ = ["TABLE_METRICS", "aggregate", "per_image_csv", "table_csv", "table_markdown"]

TABLE_METRICS: tuple[tuple[str, str, str], ...] = (
    # (record key, column header, format)
    ("test_ll", "test log-lik. / px ↑", ".3f"),
    ("coverage_ece", "coverage ECE ↓", ".3f"),
    ("uce", "UCE ↓", ".2e"),
    ("ause", "AUSE ↓", ".3f"),
    ("spearman", "Spearman(std, |err|) ↑", ".2f"),
    ("psnr", "PSNR [dB] ↑", ".2f"),
    ("ssim", "SSIM ↑", ".3f"),
    ("mean_std", "mean std", ".3g"),
)


STAGE_ORDER = ("dip", "structure", "evidence", "predictive", "metrics", "total")
"""Column order of the seconds per stage (other stages follow alphabetically)."""


def _mean_se(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, standard error ``s / sqrt(n)`` (NaN for n < 2) and n over the finite values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se, int(x.size)


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, method) in order of first appearance.

    Row keys: ``setting``, ``setting_label``, ``method``, ``method_label``, ``n``,
    ``<metric>_mean`` / ``<metric>_se`` for :data:`TABLE_METRICS`, ``seconds_<stage>``
    (mean over images) and ``ll_kind`` (the log-likelihood variants used).
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    rows = []
    for (setting, method), rs in groups.items():
        row: dict[str, Any] = {"setting": setting, "setting_label": rs[0]["setting_label"],
                               "method": method, "method_label": rs[0]["method_label"],
                               "n": len(rs)}
        for key, _, _ in TABLE_METRICS:
            row[f"{key}_mean"], row[f"{key}_se"], _ = _mean_se([r.get(key) for r in rs])
        stages = dict.fromkeys(k for r in rs for k in r.get("seconds", {}))
        for stage in stages:
            row[f"seconds_{stage}"] = _mean_se([r["seconds"].get(stage) for r in rs])[0]
        row["ll_kind"] = "/".join(dict.fromkeys(str(r.get("ll_kind", "-")) for r in rs))
        rows.append(row)
    return rows


def _fmt(mean: float, se: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:{fmt}}" if not math.isfinite(se) else f"{mean:{fmt}} ± {se:{fmt}}"


def _md_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def table_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The full table (metrics ± standard error, seconds per stage) and a compact
    test-log-likelihood table (settings × methods)."""
    found = {k[len("seconds_"):] for r in rows for k in r if k.startswith("seconds_")}
    stages = [s for s in STAGE_ORDER if s in found] + sorted(found - set(STAGE_ORDER))
    header = ["setting", "method", "n", *(h for _, h, _ in TABLE_METRICS),
              *(f"s {stage}" for stage in stages), "log-lik. kind"]
    lines = []
    for r in rows:
        lines.append([r["setting_label"], r["method_label"], str(r["n"]),
                      *(_fmt(r[f"{k}_mean"], r[f"{k}_se"], f) for k, _, f in TABLE_METRICS),
                      *(f"{r[f'seconds_{s}']:.1f}" if math.isfinite(r.get(f"seconds_{s}", math.nan))
                        else "–" for s in stages),
                      r["ll_kind"]])
    methods = list(dict.fromkeys((r["method"], r["method_label"]) for r in rows))
    settings = list(dict.fromkeys((r["setting"], r["setting_label"]) for r in rows))
    by_key = {(r["setting"], r["method"]): r for r in rows}
    ll_lines = []
    for s, s_label in settings:
        cells = [s_label]
        for m, _ in methods:
            r = by_key.get((s, m))
            cells.append("–" if r is None else _fmt(r["test_ll_mean"], r["test_ll_se"], ".3f")
                         + f" (n={r['n']})")
        ll_lines.append(cells)
    return "\n\n".join([
        f"# {title}",
        "Mean ± standard error over images; seconds per stage are means per image "
        "(the DIP stage is shared by dip, dip-evidence and the linearised methods).",
        _md_table(header, lines),
        "## Test log-likelihood per pixel (higher is better)",
        _md_table(["setting", *(label for _, label in methods)], ll_lines),
    ]) + "\n"


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: r.get(c, "") for c in columns})
    return buffer.getvalue()


def table_csv(rows: list[dict[str, Any]]) -> str:
    """Aggregated rows as CSV (one column per key, union over rows)."""
    return _csv(rows, list(dict.fromkeys(k for r in rows for k in r)))


def per_image_csv(records: list[dict[str, Any]]) -> str:
    """One CSV line per (setting, image, method) with scalar metrics and seconds."""
    flat = []
    for r in records:
        row = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
        row.update({f"seconds_{k}": v for k, v in r.get("seconds", {}).items()})
        flat.append(row)
    return _csv(flat, list(dict.fromkeys(k for r in flat for k in r)))
