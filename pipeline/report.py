"""`report/index.md` of `capmix run`: per strategy, train set size, mean cosine, unique trigrams
and nouns, zero-shot accuracy and retrieval R@1, next to the paper's medium-scale numbers, and
which of the paper's findings this run reproduces. Every number comes from the lake's tables
(mix_runs, text_stats, eval_results); nothing here is computed from anything else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

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


class Row(NamedTuple):
    """One row of the report: a model trained on a train set, once per seed."""

    name: str
    strategy: str  # a mixing strategy, or clips / clips_full
    intersect: bool
    runs: tuple[str, ...]  # its training/eval run names, seed 0 first
    train_set: str


@dataclass(frozen=True)
class Finding:
    claim: str
    better: str  # strategy (or caption set) that should score higher
    worse: str
    metric: str  # column of the summary table
    # better: `better` beats `worse` beyond noise; at_least: `better` is not worse beyond it
    kind: str = "better"


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
# The CLIPS paper's claims (clips-notes.md): CLIPS against CLIP on the same synthetic
# captions, and its short fragments against the full caption (its text-input ablation).
CLIPS_FINDINGS = (
    Finding("CLIPS retrieves better than CLIP trained on the same synthetic captions (CLIPS)",
            "clips", "synthetic", "mean_R@1"),
    Finding("Short fragments of the synthetic caption are at least as good as the full caption "
            "for retrieval (CLIPS ablation)", "clips", "clips_full", "mean_R@1", "at_least"),
    Finding("Short fragments are at least as good as the full caption for zero-shot "
            "classification (CLIPS ablation)", "clips", "clips_full", "top1", "at_least"),
)
# Metrics read per run from eval_results (seed means and SDs go into the table).
METRICS = ("top1", "top5", "mean_R@1", "mean_R@5", "mean_R@10",
           *(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)))
CHANCE = ("chance_R@1", "chance_R@5", "chance_R@10", "gallery")


def summary(mix_runs: "pd.DataFrame", stats: "pd.DataFrame", evals: "pd.DataFrame",
            rows_in: Sequence[Row]) -> "pd.DataFrame":
    """One row per report row: mean and SD over its seeds of every metric, and each seed's
    value (`METRIC_seeds`, seed order) for the paired verdicts."""
    import pandas as pd

    rows = []
    for spec in rows_in:
        mix = mix_runs[mix_runs.name == spec.train_set]
        row = {"name": spec.name, "strategy": spec.strategy, "intersect": spec.intersect,
               "seeds": len(spec.runs), "rows": _first(mix, "rows"),
               "images": _first(mix, "images"), "threshold": _first(mix, "threshold")}
        row.update(_set_stats(stats, f"train_set:{spec.train_set}"))
        for metric in METRICS:
            values = [_eval(evals, run, metric) for run in spec.runs]
            row[f"{metric}_seeds"] = values
            row[metric], row[f"{metric}_sd"] = mean_sd(values)
        for metric in CHANCE:
            row[metric] = _eval(evals, spec.runs[0], metric)
        # Evaluation sizes, for the noise of the accuracies (binomial standard errors).
        row["n_top1"] = _eval(evals, spec.runs[0], "n")
        row["n_mean_R@1"] = _eval(evals, spec.runs[0], "texts")
        key = spec.strategy + ("+ic" if spec.intersect else "")
        paper = PAPER_MEDIUM.get(key, (math.nan, math.nan))
        row["paper_imagenet"], row["paper_average"] = paper
        rows.append(row)
    return pd.DataFrame(rows)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof 1; NaN for one value) of the non-NaN values."""
    ok = [v for v in values if not math.isnan(v)]
    if not ok:
        return math.nan, math.nan
    m = sum(ok) / len(ok)
    if len(ok) < 2:
        return m, math.nan
    return m, math.sqrt(sum((v - m) ** 2 for v in ok) / (len(ok) - 1))


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


NOISE_RULE = (
    "A verdict compares the seed-paired mean difference d of the two rows (seed i of one with "
    "seed i of the other) with two standard errors. With S >= 2 seeds the standard error is "
    "the SD of the S paired differences over sqrt(S), which holds training noise (seeds) as "
    "well as evaluation noise, floored at the evaluation's binomial standard error "
    "sqrt(a(1-a)/n + b(1-b)/n) over sqrt(S); with one seed it is that binomial term alone, and "
    "training noise is not measured. \"beats\": reproduced when d > 2 SE, not reproduced when "
    "d < -2 SE, else within noise. \"at least as good\": reproduced unless d < -2 SE. "
    "Caption statistics (similarity, trigrams) are counts over the whole pool and are "
    "compared directly.")


def paired_verdict(better: Sequence[float], worse: Sequence[float], n: int,
                   kind: str = "better") -> tuple[str, float, float]:
    """(verdict, mean paired difference, its standard error) by NOISE_RULE. `better` and
    `worse` are one value per seed, in seed order (pairs are cut to the shorter list); `n` is
    the evaluation's size (0: not a rate, no binomial term)."""
    pairs = [(a, b) for a, b in zip(better, worse) if not (math.isnan(a) or math.isnan(b))]
    if not pairs:
        return "not measured", math.nan, math.nan
    s = len(pairs)
    diffs = [a - b for a, b in pairs]
    d = sum(diffs) / s
    a, b = sum(p[0] for p in pairs) / s, sum(p[1] for p in pairs) / s
    binomial = math.sqrt(max(a * (1 - a) + b * (1 - b), 0.0) / n) if n else 0.0
    se = binomial / math.sqrt(s)
    if s >= 2:
        se = max(mean_sd(diffs)[1] / math.sqrt(s), se)
    if kind == "at_least":
        return ("not reproduced" if d < -2 * se else "reproduced"), d, se
    if d > 2 * se:
        return "reproduced", d, se
    return ("not reproduced" if d < -2 * se else "within noise"), d, se


def verdicts(table: "pd.DataFrame", stats: "pd.DataFrame",
             findings: Sequence[Finding] = FINDINGS) -> list[tuple[Finding, str, str]]:
    """(finding, verdict, the two values and the noise) for each finding NOISE_RULE can judge
    here; rows this run did not train give 'not measured'."""
    out = []
    for f in findings:
        if f.metric in ("similarity_mean", "unique_trigrams"):
            a, b = (_caption_stat(table, stats, who, f.metric) for who in (f.better, f.worse))
            if a is None or b is None:
                out.append((f, "not measured", "-"))
                continue
            out.append((f, "reproduced" if a > b else "not reproduced",
                        f"{f.better} {_fmt(a)} vs {f.worse} {_fmt(b)}"))
            continue
        a, b = _seeds(table, f.better, f.metric), _seeds(table, f.worse, f.metric)
        if a is None or b is None:
            out.append((f, "not measured", "-"))
            continue
        n = _size(table, f.metric)
        verdict, d, se = paired_verdict(a, b, n, f.kind)
        ma, mb = mean_sd(a)[0], mean_sd(b)[0]
        seeds = min(len(a), len(b))
        values = (f"{f.better} {_fmt(ma)} vs {f.worse} {_fmt(mb)} (d {d:+.3f}, 2 SE "
                  f"{2 * se:.3f}, {seeds} seed{'s' if seeds > 1 else ''}"
                  + (f", n={n:,})" if n else ")"))
        out.append((f, verdict, values))
    return out


def _size(table: "pd.DataFrame", metric: str) -> int:
    """Examples behind an accuracy metric (0: not an accuracy)."""
    col = f"n_{metric}"
    if col not in table or table[col].isna().all():
        return 0
    return int(table[col].dropna().min())


def _seeds(table: "pd.DataFrame", who: str, metric: str) -> Optional[list[float]]:
    hit = table[(table.strategy == who) & (~table.intersect)]
    if hit.empty or math.isnan(hit[metric].iloc[0]):
        return None
    return list(hit[f"{metric}_seeds"].iloc[0])


def _caption_stat(table: "pd.DataFrame", stats: "pd.DataFrame", who: str, metric: str
                  ) -> Optional[float]:
    if who in ("raw", "captioner"):
        names = [d for d in stats.dataset.unique()
                 if (d == "raw" if who == "raw" else d.startswith("captioner:"))]
        if not names:
            return None
        value = _set_stats(stats, sorted(names)[0])[metric]
        return None if math.isnan(value) else value
    hit = table[(table.strategy == who) & (~table.intersect)]
    return None if hit.empty or math.isnan(hit[metric].iloc[0]) else float(hit[metric].iloc[0])


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"


def write_index(spark: "SparkSession", cfg: "Config", runs: Sequence[Row],
                timings: Optional[dict[str, float]] = None) -> Path:
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
    found = verdicts(rows, stats) + (verdicts(rows, stats, CLIPS_FINDINGS)
                                     if (rows.strategy == "clips").any() else [])
    index.write_text(_markdown(cfg, rows, found, figures,
                               (out / "captions" / "report.md").is_file(), timings or {}),
                     encoding="utf-8")
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


def _cell(row, metric: str, fmt: str) -> str:
    """`mean` or `mean ± SD` (several seeds); '-' when not measured."""
    value = row[metric]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    sd = row.get(f"{metric}_sd", math.nan)
    text = fmt.format(value)
    return text if sd is None or math.isnan(sd) else f"{text} ± {sd:.3f}"


def _table(rows: "pd.DataFrame", cols: Sequence[tuple[str, str, str]]) -> list[str]:
    lines = ["| train set | " + " | ".join(c[1] for c in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    for _, r in rows.iterrows():
        lines.append(f"| {r['name']} | " + " | ".join(_cell(r, c, f) for c, _, f in cols)
                     + " |")
    return lines


def _markdown(cfg: "Config", rows: "pd.DataFrame", found, figures, captions_report: bool,
              timings: dict[str, float]) -> str:
    demo = cfg.run.demo
    seeds = cfg.run.seeds
    seed_words = (f"{seeds} seeds each (mean ± SD over seeds)" if seeds > 1 else "one seed")
    gallery = rows["gallery"].dropna()
    chance = rows["chance_R@1"].dropna()
    lines = ["# capmix run: the paper in miniature" if demo else "# capmix run", ""]
    if demo:
        lines += [
            f"Pool: {demo.pool_size:,} Fashion-MNIST photos with web-like raw captions "
            f"({demo.descriptive_share:.0%} descriptive, the rest Figure-1 noise). Captioner "
            f"({demo.captioner.model}) and scorer ({demo.scorer.model}) trained by this run on "
            f"a disjoint curated split of {demo.curated_size:,}. One model "
            f"({cfg.train.model}) per row, {cfg.train.samples or 'pool-size'} samples seen "
            f"each, {seed_words}; zero-shot classification on {demo.classification_size:,} "
            f"test photos, retrieval on {demo.retrieval_size:,} captioned training photos that "
            "no model trains on.", ""]
    cols = [("rows", "train rows", "{:,.0f}"), ("threshold", "cos threshold", "{:.3f}"),
            ("similarity_mean", "mean cos", "{:.3f}"),
            ("unique_trigrams", "unique trigrams", "{:,.0f}"),
            ("unique_nouns", "unique nouns", "{:,.0f}"), ("top1", "top-1", "{:.3f}"),
            ("mean_R@1", "retrieval R@1", "{:.3f}"),
            ("paper_imagenet", "paper IN-1k", "{:.3f}"),
            ("paper_average", "paper avg (38)", "{:.3f}")]
    lines += _table(rows, cols)
    lines += ["", "Paper columns: Nguyen et al., medium scale (128M pool, BLIP2 captions, "
              "Tables 4 and 5), at 30% where a strategy filters; for orientation only: the "
              "scale, data and models differ. Rows clips_* are CLIPS (the CLIPS paper: text "
              f"encoder on fragments of the synthetic caption ({cfg.train.clips.fragment}, "
              f"{cfg.train.clips.fragment_tokens} tokens; clips_full: the whole caption), "
              "caption decoder), on the images and both captions of the train set named "
              "after them; their train-set columns are that set's.", "",
              "## The paper's findings here", "",
              "| finding | here | values |", "| --- | --- | --- |"]
    lines += [f"| {f.claim} | **{verdict}** | {values} |" for f, verdict, values in found]
    lines += ["", f"Noise rule: {NOISE_RULE}", "",
              "Nothing in this run is tuned per strategy: every model has the same "
              "architecture, hyper-parameters and samples-seen budget (CLIPS adds its decoder, "
              "as its paper does). The verdicts stand as measured.", ""]
    retrieval = [(f"{d}_R@{k}", f"{'I->T' if d == 'image_to_text' else 'T->I'} R@{k}",
                  "{:.3f}") for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
    if rows["mean_R@1"].notna().any():
        lines += ["## Retrieval both ways", ""]
        if len(gallery):
            lines += [f"Within galleries of {int(gallery.iloc[0]):,} images: chance is R@1 "
                      f"{chance.iloc[0]:.3f}, R@5 {rows['chance_R@5'].dropna().iloc[0]:.3f}, "
                      f"R@10 {rows['chance_R@10'].dropna().iloc[0]:.3f}.", ""]
        lines += _table(rows, retrieval) + [""]
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if captions_report:
        lines += ["Caption quality and diversity (paper Figures 3, 4, 5, 12): "
                  "[captions/report.md](captions/report.md).", ""]
    if timings:
        total = sum(timings.values())
        lines += [f"## Where the time went ({total / 60:.1f} min of stage work)", "",
                  "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()] + [""]
    return "\n".join(lines)
