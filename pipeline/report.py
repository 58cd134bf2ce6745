"""`report/index.md` of `capmix run`: per strategy, train set size, mean cosine, unique trigrams
and nouns, zero-shot accuracy and retrieval R@1, next to the paper's medium-scale numbers, and
which of the paper's findings this run reproduces. Every number comes from the lake's tables
(mix_runs, text_stats, eval_results); nothing here is computed from anything else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from capmix.config import Config

# Nguyen et al., Table 5 (medium scale: 128M pool, 128M samples seen, BLIP2 captions), at 30%
# where a strategy filters: (ImageNet accuracy, average over 38 tasks). Table 4 for `raw` and
# `synthetic` (no filtering) and the cluster-filtered rows.
PAPER_MEDIUM: dict[str, tuple[float, float]] = {
    "raw": (0.176, 0.258),
    "synthetic": (0.281, 0.357),
    "best_synthetic": (0.293, 0.368),
    "raw_top": (0.273, 0.328),
    "synthetic_top": (0.275, 0.356),
    "synthetic_for_raw_top": (0.261, 0.346),
    "raw_top_plus_synthetic": (0.297, 0.365),
    "raw_top_plus_synthetic_filtered": (0.317, 0.368),
    "synthetic_top_plus_raw_filtered": (0.298, 0.367),
    "concat_top_plus_synthetic_filtered": (0.299, 0.367),
    "raw_top_and_synthetic_top": (0.297, 0.366),
    "raw_top+ic": (0.297, 0.328),
    "raw_top_plus_synthetic_filtered+ic": (0.281, 0.314),
}


@dataclass(frozen=True)
class Finding:
    claim: str
    better: str  # strategy (or caption set) that should score higher
    worse: str
    metric: str  # column of the summary table


# The paper's claims that a miniature can test: higher is better for every metric named.
FINDINGS = (
    Finding("Synthetic captions beat raw captions without filtering (Table 4)",
            "synthetic", "raw", "top1"),
    Finding("CLIP-score filtering of raw captions helps (raw top 30% vs all raw, Table 4)",
            "raw_top", "raw", "top1"),
    Finding("Adding synthetic captions for the discarded images beats raw top 30% alone "
            "(Table 4, Figure 10)", "raw_top_plus_synthetic_filtered", "raw_top", "top1"),
    Finding("Mixing raw and synthetic beats synthetic alone (Table 5)",
            "raw_top_plus_synthetic_filtered", "synthetic", "top1"),
    Finding("Synthetic captions improve retrieval over raw (Figure 9)",
            "synthetic", "raw", "mean_R@1"),
    Finding("Synthetic captions are more similar to their images than raw ones (Figure 4)",
            "captioner", "raw", "similarity_mean"),
    Finding("Raw captions are more diverse than synthetic ones (unique trigrams, Figure 5/12)",
            "raw", "captioner", "unique_trigrams"),
)


def summary(mix_runs: "pd.DataFrame", stats: "pd.DataFrame", evals: "pd.DataFrame",
            runs: Sequence[tuple[str, str, bool]]) -> "pd.DataFrame":
    """One row per strategy run (name, strategy, intersect): the report's table."""
    import pandas as pd

    rows = []
    for name, strategy, intersect in runs:
        mix = mix_runs[mix_runs.name == name]
        row = {"name": name, "strategy": strategy, "intersect": intersect,
               "rows": _first(mix, "rows"), "images": _first(mix, "images"),
               "threshold": _first(mix, "threshold")}
        row.update(_set_stats(stats, f"train_set:{name}"))
        for metric in ("top1", "top5", "mean_R@1", "image_to_text_R@1", "text_to_image_R@1"):
            row[metric] = _eval(evals, name, metric)
        # Evaluation sizes, for the noise of the accuracies (binomial standard errors).
        row["n_top1"] = _eval(evals, name, "n")
        row["n_mean_R@1"] = _eval(evals, name, "texts")
        key = strategy + ("+ic" if intersect else "")
        paper = PAPER_MEDIUM.get(key, (math.nan, math.nan))
        row["paper_imagenet"], row["paper_average"] = paper
        rows.append(row)
    return pd.DataFrame(rows)


def _eval(evals: "pd.DataFrame", run: str, metric: str) -> float:
    hit = evals[(evals.run == run) & (evals.metric == metric)]
    return float(hit.value.iloc[0]) if len(hit) else math.nan


def _set_stats(stats: "pd.DataFrame", dataset: str) -> dict[str, float]:
    mine = stats[stats.dataset == dataset]
    if mine.empty:
        return {m: math.nan for m in ("similarity_mean", "unique_trigrams", "unique_nouns")}
    full = mine[mine.subset_size == mine.subset_size.max()]
    out = {}
    for metric in ("similarity_mean", "unique_trigrams", "unique_nouns"):
        hit = full[full.metric == metric]
        out[metric] = float(hit.value.iloc[0]) if len(hit) else math.nan
    return out


def _first(df: "pd.DataFrame", col: str) -> float:
    return float(df[col].iloc[0]) if len(df) and df[col].iloc[0] is not None else math.nan


def verdicts(table: "pd.DataFrame", stats: "pd.DataFrame") -> list[tuple[Finding, str, str]]:
    """(finding, verdict, the two values). Accuracies are fractions of n evaluated examples: a
    difference within two standard errors of the difference, sqrt(a(1-a)/n + b(1-b)/n), is
    'within noise' (one training seed per strategy cannot tell such runs apart)."""
    out = []
    for f in FINDINGS:
        a, b = _value(table, stats, f.better, f.metric), _value(table, stats, f.worse, f.metric)
        if a is None or b is None:
            out.append((f, "not measured", "-"))
            continue
        values = f"{f.better} {_fmt(a)} vs {f.worse} {_fmt(b)}"
        n = _size(table, f.metric)
        noise = 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n) if n else 0.0
        if n:
            values += f" (2 SE {noise:.3f}, n={n:,})"
        verdict = ("within noise" if abs(a - b) <= noise
                   else "reproduced" if a > b else "not reproduced")
        out.append((f, verdict, values))
    return out


def _size(table: "pd.DataFrame", metric: str) -> int:
    """Examples behind an accuracy metric (0: not an accuracy)."""
    col = f"n_{metric}"
    if col not in table or table[col].isna().all():
        return 0
    return int(table[col].dropna().min())


def _value(table: "pd.DataFrame", stats: "pd.DataFrame", who: str, metric: str
           ) -> Optional[float]:
    if who in ("raw", "captioner") and metric in ("similarity_mean", "unique_trigrams"):
        names = [d for d in stats.dataset.unique()
                 if (d == "raw" if who == "raw" else d.startswith("captioner:"))]
        if not names:
            return None
        value = _set_stats(stats, sorted(names)[0])[metric]
        return None if math.isnan(value) else value
    hit = table[(table.strategy == who) & (~table.intersect)]
    if hit.empty or metric not in hit or math.isnan(hit[metric].iloc[0]):
        return None
    return float(hit[metric].iloc[0])


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"


def write_index(spark: "SparkSession", cfg: "Config", runs: Sequence[tuple[str, str, bool]]
                ) -> Path:
    """Read the tables, draw the figures, write `run.report_dir`/index.md; returns its path."""
    import pandas as pd

    from capmix.lake import open_lake

    lake = open_lake(spark, cfg.lake)

    def table(name: str, cols: list[str]) -> "pd.DataFrame":
        return lake.read(name).toPandas() if lake.exists(name) else pd.DataFrame(columns=cols)

    mix_runs = table("mix_runs", ["name", "rows", "images", "threshold"])
    stats = table("text_stats", ["dataset", "metric", "subset_size", "value"])
    evals = table("eval_results", ["run", "metric", "value"])
    rows = summary(mix_runs, stats, evals, runs)
    out = Path(cfg.run.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(rows, out)
    index = out / "index.md"
    index.write_text(_markdown(cfg, rows, verdicts(rows, stats), figures,
                               (out / "captions" / "report.md").is_file()), encoding="utf-8")
    return index


def _figures(rows: "pd.DataFrame", out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    if rows[["top1", "mean_R@1"]].notna().any().any():
        fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.45 * len(rows)), layout="constrained")
        for ax, metric, label in ((axes[0], "top1", "zero-shot top-1 (Fashion-MNIST test)"),
                                  (axes[1], "mean_R@1", "retrieval mean R@1 (held-out)")):
            ax.barh(rows.name, rows[metric].fillna(0), color="#4C72B0")
            ax.set_xlabel(label)
            ax.invert_yaxis()
        axes[1].set_yticklabels([])
        fig.savefig(out / "strategies.png", dpi=100)
        plt.close(fig)
        drawn.append(("Zero-shot accuracy and retrieval per strategy", "strategies.png"))
    ok = rows.dropna(subset=["similarity_mean", "top1"])
    if len(ok):
        fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
        ax.scatter(ok.similarity_mean, ok.top1, s=40 + 300 * ok.rows / max(ok.rows.max(), 1),
                   alpha=0.6)
        for _, r in ok.iterrows():
            ax.annotate(r["name"], (r.similarity_mean, r.top1), fontsize=7)
        ax.set_xlabel("mean cosine similarity of the train set (less noise to the right)")
        ax.set_ylabel("zero-shot top-1")
        fig.savefig(out / "noise_vs_accuracy.png", dpi=100)
        plt.close(fig)
        drawn.append(("Train-set noise vs accuracy (circle size: train set size)",
                      "noise_vs_accuracy.png"))
    return drawn


def _markdown(cfg: "Config", rows: "pd.DataFrame", found, figures, captions_report: bool) -> str:
    demo = cfg.run.demo
    lines = ["# capmix run: the paper in miniature" if demo else "# capmix run", ""]
    if demo:
        lines += [
            f"Pool: {demo.pool_size:,} Fashion-MNIST photos with web-like raw captions "
            f"({demo.descriptive_share:.0%} descriptive, the rest Figure-1 noise). Captioner "
            f"({demo.captioner.model}) and scorer ({demo.scorer.model}) trained by this run on "
            f"a disjoint curated split of {demo.curated_size:,}. One CLIP "
            f"({cfg.train.model}) per strategy, {cfg.train.samples or 'pool-size'} samples "
            f"seen each; zero-shot classification on {demo.classification_size:,} test photos, "
            f"retrieval on {demo.retrieval_size:,} held-out captioned photos.", ""]
    cols = [("rows", "train rows", "{:,.0f}"), ("threshold", "cos threshold", "{:.3f}"),
            ("similarity_mean", "mean cos", "{:.3f}"),
            ("unique_trigrams", "unique trigrams", "{:,.0f}"),
            ("unique_nouns", "unique nouns", "{:,.0f}"), ("top1", "top-1", "{:.3f}"),
            ("mean_R@1", "retrieval R@1", "{:.3f}"),
            ("paper_imagenet", "paper IN-1k", "{:.3f}"),
            ("paper_average", "paper avg (38)", "{:.3f}")]
    lines += ["| train set | " + " | ".join(c[1] for c in cols) + " |",
              "| --- |" + " ---: |" * len(cols)]
    for _, r in rows.iterrows():
        cells = ["-" if r[c] is None or (isinstance(r[c], float) and math.isnan(r[c]))
                 else f.format(r[c]) for c, _, f in cols]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "Paper columns: Nguyen et al., medium scale (128M pool, BLIP2 captions, "
              "Tables 4 and 5), at 30% where a strategy filters; for orientation only: the "
              "scale, data and models differ.", "", "## The paper's findings here", "",
              "| finding | here | values |", "| --- | --- | --- |"]
    lines += [f"| {f.claim} | **{verdict}** | {values} |" for f, verdict, values in found]
    lines += ["", "Nothing in this run is tuned per strategy: every CLIP has the same "
              "architecture, hyper-parameters and samples-seen budget, and one seed; "
              "\"within noise\" marks differences inside two standard errors of the "
              "evaluation.", ""]
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if captions_report:
        lines += ["Caption quality and diversity (paper Figures 3, 4, 5, 12): "
                  "[captions/report.md](captions/report.md).", ""]
    return "\n".join(lines)
