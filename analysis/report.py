"""`analyze`: one call from an MLflow study to results.csv, tables, convention tests, figures and a report.

The report exists twice: a self-contained HTML file (figures embedded as data: PNGs, styles inline, no
script, no external URL: it opens offline and can be mailed or attached) and its Markdown twin (figures
linked, for papers and pull requests). Both are rendered from one list of `Section`s, in reading order:
warnings, the paper's claims tested, the average rank, the paper's figures per benchmark, the tables (best
cell bold), then coverage, baselines, uncertainty, convention tests, protocol comparison, more heatmaps.
Both and every file they are made from are logged back to MLflow as an analysis run (tag dpl.kind=analysis)
in the study's experiment.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.claims import baseline_comparison, recipe_pairs, run_claims, summary
from analysis.conventions import TestResult, run_all
from analysis.figures import Drawn, make_figures
from analysis.runs import (aggregate_seeds, client_for, coverage, coverage_summary, find_experiment, load_results,
                           load_search)
from analysis.tables import (
    Shown, average_rank_display, average_ranks, best_points, group_name, groups, rank_table, score_display, slug,
    to_markdown, write_tables,
)
from analysis.uncertainty import FLIP_ALPHA, TAU, budget, rank_intervals, read_histories

#: Which convention-test rows go into the report body (all of them are in conventions.json/csv).
_REPORT_SCOPES = ("best point", "average rank", "pooled", "per-network rhos", "per network", "per point",
                  "paired over points", "paired over networks and points", "per benchmark")


def _warnings(df: pd.DataFrame) -> list[str]:
    out = []
    trials = df[df["run_id"] != ""] if not df.empty else df
    if not trials.empty and trials["weights_random"].fillna(False).astype(bool).any():
        out.append("Some or all trials used RANDOM loss-network weights: scores say nothing about ImageNet "
                   "features, and 'ImageNet top-1' is the architecture's V1 accuracy, not that of the weights used.")
    if not trials.empty and trials["synthetic_data"].fillna(False).astype(bool).any():
        out.append("Some or all trials ran on SYNTHETIC data (smoke test): the numbers are not results.")
    return out


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def conventions_frame(results: list[TestResult]) -> pd.DataFrame:
    """Test results as a flat table (extra fields JSON-encoded)."""
    rows = [r.to_dict() for r in results]
    for r in rows:
        r["extra"] = json.dumps(r["extra"])
    cols = ["test", "task", "dataset", "metric", "setting", "scope", "statistic", "value", "ci_low", "ci_high",
            "p_value", "n", "verdict", "hypothesis", "extra"]
    return pd.DataFrame(rows, columns=cols)


def _report_tests(conv: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The convention tests shown in the report, one table per section."""
    if conv.empty:
        return {}
    c = conv[conv["scope"].isin(_REPORT_SCOPES) | conv["scope"].str.startswith("pooled")
             | ((conv["test"] == "C1 imagenet_accuracy") & (conv["statistic"] == "spearman"))].copy()
    c["value"] = [
        _fmt(v) + (f" [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and not pd.isna(lo) else "")
        for v, lo, hi in zip(c["value"], c["ci_low"], c["ci_high"])
    ]
    c["p_value"] = c["p_value"].map(_fmt)
    shown = ["task", "dataset", "metric", "setting", "scope", "statistic", "value", "p_value", "n", "verdict"]
    sections = {
        "C1: ImageNet accuracy vs score (value [95% bootstrap CI])": c["test"] == "C1 imagenet_accuracy",
        "C2: is the last point the best one?": c["test"] == "C2 last_point_best",
        "C2: relative depth vs score": c["test"] == "C2 depth_correlation",
        "Batch norm: vgg16 vs vgg16_bn": c["test"] == "batchnorm vgg16_vs_vgg16_bn",
        "Batch norm: loss network in eval vs train mode": c["test"] == "batchnorm eval_vs_train_mode",
        "Claim: VGG without batch norm performs best": c["test"] == "claim vgg_without_bn_best",
        "Claim: layer vs architecture (variance shares, 95% F-test interval)":
            c["test"] == "claim layer_vs_architecture",
        "Claim: perceptual loss vs pixel baseline (95% Clopper-Pearson interval)":
            c["test"] == "claim beats_pixel_baseline",
        "Claim: recipes (the more accurate ImageNet weight set of one architecture; sign-flip test over "
        "architectures)": c["test"] == "claim recipe_accuracy",
    }
    out = {}
    for title, mask in sections.items():
        sub = c[mask]
        if not sub.empty:
            hyp = conv[conv["test"] == sub["test"].iloc[0]]["hypothesis"].iloc[0]
            out[f"{title}|{hyp}"] = sub[shown]
    return out


# ------------------------------------------------------------------------------------------- report model
@dataclass
class Sub:
    """A level-3 heading, with the hypothesis it tests when it is a convention test."""

    title: str
    hypothesis: str = ""


@dataclass
class Note:
    """One line of text: what a section without data says instead of an empty table."""

    text: str


@dataclass
class Section:
    """A level-2 section: title, intro and parts (Sub, Note, Shown table or Drawn figure), in order.
    `collapsed` sections are folded away in HTML (<details>): detail a reader opens on purpose."""

    title: str
    intro: str
    parts: list = field(default_factory=list)
    collapsed: bool = False


def _table_parts(content: object, empty: str) -> list:
    """A DataFrame, a Shown table or a {"title|hypothesis": table} dict as parts; `empty` for no rows."""
    items = content.items() if isinstance(content, dict) else [("", content)]
    parts: list = []
    for name, table in items:
        name, _, hyp = name.partition("|")
        if name:
            parts.append(Sub(name, hyp))
        shown = table if isinstance(table, Shown) else Shown.plain(table)
        parts.append(Note(empty) if shown.empty else shown)
    return parts or [Note(empty)]


def _figure_parts(figures: list[Drawn] | None) -> list:
    """The paper-style figures of each benchmark's primary metric: heatmap, accuracy scatter, depth curves."""
    if figures is None:
        return [Note("Figures were not drawn (analysis run with --no-figures / figures=False).")]
    primary = [d for d in figures if d.primary]
    if not primary:
        return [Note("No figures: no benchmark has a finished trial yet.")]
    parts: list = []
    for group in dict.fromkeys(d.group for d in primary):
        parts.append(Sub(group))
        parts += [d for d in primary if d.group == group]
    return parts


def _coverage_intro(search: dict[str, Any] | None) -> str:
    """The Coverage section's first sentence: a grid's plan, or how far a search is (`runs.load_search`)."""
    if search is None:
        return "Planned trials (plan.json of the study run) against the runs found, by status. "
    seeds = f"{search['seeds']} seed{'s' if search['seeds'] != 1 else ''}"
    if search["type"] == "halving":
        used, grid = search.get("epochs_used", 0), search.get("epochs_grid", 0)
        return (f"Search (halving): {search['samples']} configurations, each on {seeds}; rungs at epoch "
                f"{', '.join(map(str, search.get('rungs', [])))}; the trials ran {used} of the grid's {grid} epochs "
                f"({used / max(grid, 1):.0%}). A trial stopped early at a rung has status STOPPED: it did what the "
                f"search asked (not a failure) and has no final metrics, so its cells read STOPPED in the tables; "
                f"`dpl recommend` ranks every candidate by the rung it reached. ")
    return (f"Search ({search['type']}): {search['done']} of {search['samples']} samples done, {search['left']} "
            f"left, each on {seeds}. The table counts the trials the search has drawn so far; configurations it "
            f"did not draw are not missing. ")


def _sections(df: pd.DataFrame, cells: pd.DataFrame, plan: list, conv: pd.DataFrame,
              claims: pd.DataFrame, uncertainty: dict[str, pd.DataFrame] | None = None,
              figures: list[Drawn] | None = None, comparison: Section | None = None,
              search: dict[str, Any] | None = None) -> list[Section]:
    """The report's sections in reading order: claims, average ranks, the figures, the tables, then the
    detail (coverage, baselines, uncertainty, convention tests, protocol comparison, more heatmaps). Shared
    by the Markdown and HTML renderers, so both say the same in the same order."""
    cov = coverage(df, plan)
    cov_summary = coverage_summary(cov)
    failed = cov[cov["status"] != "FINISHED"][["task", "dataset", "network", "point", "seed", "status", "error"]]
    ranks = rank_table(best_points(cells)) if not cells.empty else pd.DataFrame()
    avg = average_ranks(ranks)
    tables = {group_name(k): score_display(g) for k, g in groups(cells)}
    sections = [
        Section("The paper's claims, tested",
                "One row per finding of the paper, tested on this study (pooled over its benchmarks), and one "
                "the paper could not test (recipes: weight sets of one architecture); 'benchmarks' counts the "
                "benchmarks significant on their own. C1 and C2 are claims of absence: 'consistent' means no "
                "significant effect, 'INVERSE' a significant effect the other way. A claim about networks the "
                "study does not hold (no plain VGG, no recipe pair) is 'not applicable'. The Kumar et al. column "
                "gives the direction they report on BAPPS. Every per-benchmark row is in the section Convention "
                "tests and in conventions.json; 'see' names the tables and figures behind each row.",
                _table_parts(claims, "No claim could be tested: the study has no finished trials.")),
        Section("Average ranks",
                "One ranking for the study: each architecture ranked on every benchmark (task/dataset) by its "
                "best point on the primary metric (1 = best, bold = best in the column); 'average rank' = mean "
                "over benchmarks; 'average rank (all metrics)' uses each benchmark's mean rank over all its "
                "metrics; 'benchmarks' = benchmarks the network was ranked on. Pixel baselines are never "
                "ranked: see Pixel baselines.",
                _table_parts(average_rank_display(avg) if not avg.empty else avg,
                             "No ranking: no network has a finished trial yet.")),
        Section("Figures",
                "Per benchmark (its primary metric), as in the paper: the score of every network at every "
                "extraction point (heatmap; * and box = each network's best point), ImageNet top-1 against the "
                "best-point score (convention C1) and the score against the relative depth of the point "
                "(convention C2). Heatmaps of the other metrics are under 'More heatmaps' at the end.",
                _figure_parts(figures)),
        Section("Tables",
                "Score per network (rows, by ImageNet top-1) and point position L1-L4 (hover a cell for its node "
                "name; 'best point' names it), each network's best cell in bold; '± std (n=seeds)' when several "
                "seeds ran; the status for failed or missing cells.",
                _table_parts(tables, "No tables: the study has no trials yet.")),
        Section("Coverage", _coverage_intro(search) + "Non-finished trials are listed below with their error.",
                _table_parts({"summary": cov_summary}, "No trials planned or found.")
                + _table_parts({"not finished": failed}, "Every trial finished.")),
        Section("Pixel baselines", "Per benchmark, the pixel-loss baseline (network none) beside the loss "
                                   "networks: (network, point) cells and architectures (best point) that beat it.",
                _table_parts(baseline_comparison(cells) if not cells.empty else pd.DataFrame(),
                             "No pixel-baseline trial (network none) in this study.")),
        Section("Uncertainty and budget",
                "Seed bootstrap of the average rank: seeds resampled within each cell (benchmark x network x "
                "point), ranks recomputed; 95% percentile interval; flip_share = share of resamples in which a "
                f"network and the next one swap, distinguishable = flip_share <= {FLIP_ALPHA} (empty with one "
                f"seed per cell). Budget: per benchmark, the first epoch from which Kendall tau to the final "
                f"epoch's ranking stays >= {TAU} (budget.csv, tau per epoch in budget_curve.csv).",
                _table_parts(uncertainty or {}, "No trials yet: nothing to resample.")),
        Section("Convention tests", "Two-sided p-values unless stated; alpha = 0.05; see docs/ANALYSIS.md. "
                                    "Every test, including per-position and per-network ones, is in "
                                    "conventions.json.",
                _table_parts(_report_tests(conv), "No convention test could run: no finished trials.")),
    ]
    if comparison is not None:
        sections.append(comparison)
    more = [d for d in figures or [] if not d.primary and d.kind == "heatmap"]
    if more:
        parts: list = []
        for d in more:
            parts += [Sub(d.group), d]
        sections.append(Section("More heatmaps", "Heatmaps of the metrics that are not their benchmark's primary "
                                                 "one (folded: open to see them).", parts, collapsed=True))
    return sections


def render_markdown(title: str, warnings: list[str], sections: list[Section], out_dir: Path) -> str:
    """The Markdown twin (for papers and pull requests): the same sections, tables inline with the best cells
    **bold**, figures linked relative to `out_dir`."""
    lines = [f"# {title}", ""]
    lines += [f"> **WARNING:** {w}" for w in warnings] + ([""] if warnings else [])
    for sec in sections:
        lines += [f"## {sec.title}", "", sec.intro, ""]
        for part in sec.parts:
            if isinstance(part, Sub):
                lines += [f"### {part.title}", ""]
                lines += [f"Hypothesis: {part.hypothesis}.", ""] if part.hypothesis else []
            elif isinstance(part, Note):
                lines += [part.text, ""]
            elif isinstance(part, Shown):
                lines += [to_markdown(part), ""]
            elif isinstance(part, Drawn):
                link = part.path.relative_to(out_dir).as_posix()
                caption = part.caption.replace("*", "\\*")  # the best-point mark is not emphasis
                lines += [f"![{part.kind}: {part.group}]({link})", "", f"*{caption}*", ""]
    return "\n".join(lines)


#: A cell that reads as a number (right-aligned so digits line up); text stays left-aligned.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?( ± .*)?|n/a|–")


def _html_table(t: Shown) -> str:
    """A Shown table as HTML: a named header cell per column, best cells <strong>, tooltips as title=."""
    e = html.escape
    head = "".join(f"<th scope='col'>{e(str(c))}</th>" for c in t.frame.columns)
    rows = []
    for i in range(len(t.frame)):
        cells = []
        for j, col in enumerate(t.frame.columns):
            text = e(str(t.frame.iat[i, j]))
            tip = t.titles.iat[i, j]
            classes = " ".join(c for c, on in (("num", bool(_NUMBER.fullmatch(str(t.frame.iat[i, j])))),
                                               ("best", bool(t.bold.iat[i, j]))) if on)
            attrs = (f" title='{e(tip)}'" if tip else "") + (f" class='{classes}'" if classes else "")
            body = f"<strong>{text}</strong>" if t.bold.iat[i, j] else text
            cells.append(f"<th scope='row'{attrs}>{body}</th>" if j == 0 else f"<td{attrs}>{body}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _html_figure(d: Drawn) -> str:
    """A figure embedded as a base64 data: URI (no file or network access when the report is opened)."""
    e = html.escape
    data = base64.b64encode(d.path.read_bytes()).decode()
    return (f"<figure class='{e(d.kind)}'><img alt='{e(d.caption)}' src='data:image/png;base64,{data}'/>"
            f"<figcaption>{e(d.caption)}</figcaption></figure>")


def _anchor(title: str) -> str:
    return slug(title).lower()


_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1280px;margin:0 auto;"
    "padding:0 16px 48px;color:#1a1a1a;line-height:1.45}"
    "h1{font-size:1.6em}h2{border-bottom:2px solid #0072B2;padding-bottom:2px;margin-top:2em}"
    "h3{margin-top:1.4em}p.intro{color:#444;max-width:80ch}p.note{font-style:italic;color:#555}"
    ".warning{background:#fff4e5;border-left:6px solid #D55E00;padding:8px 12px;margin:8px 0}"
    "table{border-collapse:collapse;font-size:13px;margin:6px 0 14px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}td.num{text-align:right}"
    "thead th{background:#f0f4f8;text-align:center}tbody th{text-align:left;font-weight:normal}"
    "td.best,th.best{background:#fff3b0}figure{margin:12px 0}"
    "img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:13px;color:#444}"
    "details>summary{cursor:pointer}details>summary>h2{display:inline}"
)


def render_html(title: str, warnings: list[str], sections: list[Section]) -> str:
    """A self-contained HTML report: the same content as the Markdown one; figures embedded as data: URIs,
    styles inline, no script and no external URL, so it opens offline exactly as it was written."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    body += [f"<div class='warning' role='alert'><strong>WARNING:</strong> {e(w)}</div>" for w in warnings]
    for sec in sections:
        head = f"<h2 id='{_anchor(sec.title)}'>{e(sec.title)}</h2>"
        inner = [f"<p class='intro'>{e(sec.intro)}</p>"]
        for part in sec.parts:
            if isinstance(part, Sub):
                inner.append(f"<h3>{e(part.title)}</h3>")
                if part.hypothesis:
                    inner.append(f"<p><i>Hypothesis: {e(part.hypothesis)}.</i></p>")
            elif isinstance(part, Note):
                inner.append(f"<p class='note'>{e(part.text)}</p>")
            elif isinstance(part, Shown):
                inner.append(_html_table(part))
            elif isinstance(part, Drawn):
                inner.append(_html_figure(part))
        if sec.collapsed:
            body.append(f"<details><summary>{head}</summary>{''.join(inner)}</details>")
        else:
            body += [f"<section>{head}", *inner, "</section>"]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")


def _study(client, experiment: str, problems: list[str], seed: int) -> tuple:
    """(df, plan, cells, test results, claims summary) of one study."""
    df, plan = load_results(client, experiment, problems)
    cells = aggregate_seeds(df)
    results = run_all(cells, seed=seed) + run_claims(cells, seed=seed)
    return df, plan, cells, results, summary(results)


def _benchmark_ranks(cells: pd.DataFrame) -> pd.DataFrame:
    """Network x benchmark rank table (the columns of the average-rank table) of one study."""
    if cells.empty:
        return pd.DataFrame()
    return average_ranks(rank_table(best_points(cells))).set_index("network")


def compare_studies(name_a: str, cells_a: pd.DataFrame, claims_a: pd.DataFrame, name_b: str,
                    cells_b: pd.DataFrame, claims_b: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Protocol comparison: each claim's verdict under both studies, Spearman rho (exact/permutation p for
    small n) between their rankings per benchmark and for the average rank, and the networks whose
    average rank moves most."""
    from analysis.conventions import correlate

    verdicts = pd.DataFrame({"claim": claims_a["claim"], f"verdict ({name_a})": claims_a["verdict"]}).merge(
        pd.DataFrame({"claim": claims_b["claim"], f"verdict ({name_b})": claims_b["verdict"]}), on="claim", how="outer")
    ra, rb = _benchmark_ranks(cells_a), _benchmark_ranks(cells_b)
    rows, moves = [], pd.DataFrame()
    if not ra.empty and not rb.empty:
        skip = {"imagenet_top1", "avg_rank_all_metrics", "n_benchmarks"}
        for col in [c for c in ra.columns if c in rb.columns and c not in skip]:
            both = pd.concat([ra[col], rb[col]], axis=1, keys=["a", "b"]).dropna()
            rho, p = (correlate(both["a"].to_numpy(), both["b"].to_numpy(), "spearman")
                      if len(both) >= 4 and both["a"].nunique() > 1 and both["b"].nunique() > 1 else (math.nan, math.nan))
            rows.append({"benchmark": "average rank" if col == "avg_rank" else col, "n": len(both), "spearman": rho,
                         "p_value": p})
        both = pd.concat([ra["avg_rank"], rb["avg_rank"]], axis=1, keys=[name_a, name_b]).dropna()
        both["change"] = both[name_b] - both[name_a]
        moves = both.reindex(both["change"].abs().sort_values(ascending=False).index).head(5).reset_index()
    return {"verdicts": verdicts, "rank correlation": pd.DataFrame(rows, columns=["benchmark", "n", "spearman",
                                                                                   "p_value"]),
            "largest moves (average rank)": moves}


def _uncertainty(client, df: pd.DataFrame, out_dir: Path, seed: int) -> dict[str, pd.DataFrame]:
    """Rank intervals (rank_intervals.csv) and the ranking's budget (budget.csv, budget_curve.csv)."""
    if df.empty:
        return {}
    intervals = rank_intervals(df, seed=seed)
    settle, curve = budget(read_histories(client, df))
    intervals.to_csv(out_dir / "rank_intervals.csv", index=False)
    settle.to_csv(out_dir / "budget.csv", index=False)
    curve.to_csv(out_dir / "budget_curve.csv", index=False)
    return {"average rank, 95% seed-bootstrap interval": intervals,
            f"budget: epoch from which the ranking stays within Kendall tau {TAU} of the final one": settle}


def analyze(tracking_uri: str | None, experiment: str, out_dir: Path, seed: int = 0,
            log_to_mlflow: bool = True, problems: list[str] | None = None, figures: bool = True,
            compare: str | None = None) -> Path:
    """Analyse study `experiment` from `tracking_uri` into `out_dir`; return the HTML report's path.

    Writes results.csv (tidy, one row per trial x final metric, failed/missing included), cells.csv
    (seed-averaged), claims.csv, recipe_pairs.csv (the recipe claim's pairs), coverage.csv,
    rank_intervals.csv (seed bootstrap of the average rank), budget.csv and budget_curve.csv (the epoch a
    benchmark's ranking settles at), tables/ (CSV + Markdown), conventions.json (+ .csv), figures/ (PNG),
    report.md and report.html, then logs out_dir as an analysis run (dpl.kind=analysis) in the experiment.
    Raises ExperimentNotFound (a LookupError) listing the available experiments for an unknown name.
    Whatever could not be read (e.g. plan.json) is appended to `problems` (one line each, for the CLI to
    print) and stated as a warning at the top of the report. `figures=False` skips the PNGs (the slowest
    part: a report without figures for quick looks and tests). `compare` names a second study (e.g. the
    `paper` protocol beside the `corrected` one): the claims table gets its verdicts as a second column and a
    "Protocol comparison" section follows (also compare.json).
    """
    problems = [] if problems is None else problems
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = client_for(tracking_uri)
    exp = find_experiment(client, experiment)
    df, plan, cells, results, claims = _study(client, experiment, problems, seed)
    df.to_csv(out_dir / "results.csv", index=False)
    cells.to_csv(out_dir / "cells.csv", index=False)
    coverage(df, plan).to_csv(out_dir / "coverage.csv", index=False)
    if not cells.empty:
        write_tables(cells, out_dir / "tables")
    claims.to_csv(out_dir / "claims.csv", index=False)
    if not cells.empty:
        recipe_pairs(cells).to_csv(out_dir / "recipe_pairs.csv", index=False)
    uncertainty = _uncertainty(client, df, out_dir, seed)
    comparison: dict[str, pd.DataFrame] = {}
    if compare:
        find_experiment(client, compare)
        other: list[str] = []
        _, _, cells_b, _, claims_b = _study(client, compare, other, seed)
        problems += [f"{compare}: {line}" for line in other]
        comparison = compare_studies(experiment, cells, claims, compare, cells_b, claims_b)
        (out_dir / "compare.json").write_text(json.dumps(
            {k: v.to_dict(orient="records") for k, v in comparison.items()}, indent=1, default=str))
        claims = claims.merge(comparison["verdicts"][["claim", f"verdict ({compare})"]], on="claim", how="left")
        claims = claims.rename(columns={"verdict": f"verdict ({experiment})"})
    (out_dir / "conventions.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    conv = conventions_frame(results)
    conv.to_csv(out_dir / "conventions.csv", index=False)
    drawn = make_figures(cells, out_dir / "figures") if figures and not cells.empty else None
    if figures and cells.empty:
        drawn = []
    title = f"Deep perceptual loss study: {experiment}"
    warnings = problems + _warnings(df)
    compared = None
    if comparison:
        compared = Section("Protocol comparison", f"{experiment} against {compare} (another protocol, or another "
                           "set of networks such as paper vs extended): each claim's verdict, the Spearman "
                           "correlation of the two studies' rankings per benchmark over the networks both ranked "
                           "(n), and the networks whose average rank moves most (change = second - first).",
                           _table_parts(comparison, "Nothing to compare."))
    sections = _sections(df, cells, plan, conv, claims, uncertainty, drawn, compared,
                         load_search(client, exp.experiment_id))
    (out_dir / "report.md").write_text(render_markdown(title, warnings, sections, out_dir))
    report = out_dir / "report.html"
    report.write_text(render_html(title, warnings, sections))
    if log_to_mlflow:
        run = client.create_run(exp.experiment_id, run_name="analysis",
                                tags={"dpl.kind": "analysis", "dpl.study": experiment})
        client.log_artifacts(run.info.run_id, str(out_dir))
        client.set_terminated(run.info.run_id)
    return report
