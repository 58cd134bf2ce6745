"""The caption-quality report: markdown plus PNG figures drawn from `text_stats` rows alone.

- fig3_words_grounding.png: words per caption and grounding ratio per set (paper, Figure 3), as
  box plots of the stored quantiles (whiskers p05-p95).
- fig4_similarity.png: cosine-similarity distributions of raw vs synthetic captions (Figure 4).
- fig5_noise_diversity.png: mean cosine similarity (less noise to the right) vs unique trigrams,
  one circle per train set sized by its captions (Figure 5).
- fig12_scaling.png: unique nouns and unique trigrams on random subsets of growing size
  (Figure 12).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FIGURES = ("fig3_words_grounding.png", "fig4_similarity.png", "fig5_noise_diversity.png",
           "fig12_scaling.png")


def _full(stats: "pd.DataFrame") -> "pd.DataFrame":
    """Whole-set rows: each set's metrics at its own size (the largest subset_size)."""
    sizes = stats[stats.metric == "captions"].groupby("dataset").subset_size.max()
    full = stats[stats.subset_size == stats.dataset.map(sizes)]
    return full.pivot_table(index="dataset", columns="metric", values="value", aggfunc="first")


def _sources(names) -> list[str]:
    """Raw and captioner sets (the paper's raw-vs-synthetic comparisons)."""
    return [n for n in names if n == "raw" or n.startswith("captioner:")]


def _fig3(full: "pd.DataFrame", ax_words, ax_ground) -> None:
    for ax, key, label in ((ax_words, "words", "words per caption"),
                           (ax_ground, "grounding", "grounding ratio (visual words / words)")):
        stats = []
        for name, row in full.iterrows():
            if f"{key}_p50" in row and row.notna().get(f"{key}_p50", False):
                stats.append({"label": name, "med": row[f"{key}_p50"], "q1": row[f"{key}_p25"],
                              "q3": row[f"{key}_p75"], "whislo": row[f"{key}_p05"],
                              "whishi": row[f"{key}_p95"], "mean": row[f"{key}_mean"]})
        if stats:
            ax.bxp(stats, showmeans=True, showfliers=False, orientation="horizontal")
        ax.set_xlabel(label)


def _fig4(stats: "pd.DataFrame", full: "pd.DataFrame", ax) -> None:
    hist = stats[stats.metric.str.startswith("similarity_hist_")]
    for name in _sources(full.index) or list(full.index):
        rows = hist[(hist.dataset == name) & (hist.subset_size == full.loc[name, "captions"])]
        if rows.empty:
            continue
        edges = rows.metric.str.replace("similarity_hist_", "", regex=False).astype(float)
        order = edges.argsort()
        mean = full.loc[name].get("similarity_mean")
        ax.step(edges.iloc[order] + 0.005, rows.value.iloc[order], where="mid",
                label=f"{name} (mean {mean:.3f})")
    ax.set_xlabel("image-text cosine similarity")
    ax.set_ylabel("share of captions per 0.01 bin")
    ax.legend(fontsize=8)


def _fig5(full: "pd.DataFrame", ax) -> None:
    sets = [n for n in full.index if n.startswith("train_set:")] or list(full.index)
    rows = full.loc[sets]
    rows = rows[rows.get("similarity_mean").notna()] if "similarity_mean" in rows else rows[:0]
    if rows.empty:
        ax.text(0.5, 0.5, "no scored caption sets", ha="center")
        return
    sizes = 2000 * rows.captions / rows.captions.max()
    ax.scatter(rows.similarity_mean, rows.unique_trigrams, s=sizes, alpha=0.4)
    for name, row in rows.iterrows():
        ax.annotate(name.replace("train_set:", ""), (row.similarity_mean, row.unique_trigrams),
                    fontsize=7, ha="center")
    ax.margins(0.25)
    ax.set_xlabel("mean cosine similarity (less noise ->)")
    ax.set_ylabel("unique trigrams (diversity)")


def _fig12(stats: "pd.DataFrame", axes) -> None:
    names = _sources(stats.dataset.unique()) or list(stats.dataset.unique())
    for ax, metric in zip(axes, ("unique_nouns", "unique_trigrams")):
        for name in names:
            rows = stats[(stats.dataset == name) & (stats.metric == metric)].sort_values(
                "subset_size")
            if not rows.empty:
                ax.plot(rows.subset_size, rows.value, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("captions in the random subset")
        ax.set_ylabel(metric.replace("_", " "))
        ax.legend(fontsize=8)


def write_report(stats: "pd.DataFrame", out_dir: str | os.PathLike) -> Path:
    """Draw the figures and report.md from `text_stats` rows (a pandas frame); returns the
    markdown file's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if stats.empty:
        raise ValueError("no text_stats rows to report")
    full = _full(stats)
    drawings = {
        FIGURES[0]: (lambda fig: _fig3(full, *fig.subplots(1, 2)), (12, 1.5 + 0.5 * len(full))),
        FIGURES[1]: (lambda fig: _fig4(stats, full, fig.subplots()), (7, 4.5)),
        FIGURES[2]: (lambda fig: _fig5(full, fig.subplots()), (7, 5)),
        FIGURES[3]: (lambda fig: _fig12(stats, fig.subplots(1, 2)), (12, 4.5)),
    }
    for name, (draw, size) in drawings.items():
        fig = plt.figure(figsize=size, layout="constrained")
        draw(fig)
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    md = out / "report.md"
    md.write_text(_markdown(stats, full), encoding="utf-8")
    return md


def _markdown(stats: "pd.DataFrame", full: "pd.DataFrame") -> str:
    taggers = sorted(t for t in stats.get("tagger", []) if isinstance(t, str))
    cols = [("captions", "{:,.0f}"), ("words_mean", "{:.2f}"), ("grounding_mean", "{:.3f}"),
            ("similarity_mean", "{:.3f}"), ("unique_trigrams", "{:,.0f}"),
            ("unique_nouns", "{:,.0f}")]
    lines = ["# Caption quality and diversity", "",
             "Measured by `capmix stats` (table `text_stats`); figures after the paper's "
             "Figures 3, 4, 5 and 12.", "",
             "| caption set | " + " | ".join(c for c, _ in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    for name, row in full.iterrows():
        cells = [fmt.format(row[c]) if c in row and row.notna().get(c, False) else "-"
                 for c, fmt in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Nouns tagged by: {', '.join(sorted(set(taggers))) or '-'}.", ""]
    titles = ["Words per caption and grounding ratio (Figure 3)",
              "Cosine similarity, raw vs synthetic (Figure 4)",
              "Noise vs diversity of the train sets (Figure 5)",
              "Diversity on random subsets of growing size (Figure 12)"]
    for title, fig in zip(titles, FIGURES):
        lines += [f"## {title}", "", f"![{title}]({fig})", ""]
    return "\n".join(lines)
