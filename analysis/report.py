"""`analyze`: one call from an MLflow study to results.csv, tables, convention tests, figures and a report.

The report exists twice: Markdown (figures linked, for a repository or a notebook) and a self-contained
HTML file (figures embedded as base64, so it can be mailed or attached). Both and every file they are made
from are logged back to MLflow as an analysis run (tag dpl.kind=analysis) in the study's experiment.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from analysis.claims import baseline_comparison, run_claims, summary
from analysis.conventions import TestResult, run_all
from analysis.figures import make_figures
from analysis.runs import aggregate_seeds, client_for, coverage, coverage_summary, find_experiment, load_results
from analysis.tables import (
    average_ranks, best_points, group_name, groups, rank_table, status_table, to_markdown, write_tables,
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
        "C1 control: V1/V2 weights of the same architecture": c["test"] == "C1 weights_control",
        "C2: is the last point the best one?": c["test"] == "C2 last_point_best",
        "C2: relative depth vs score": c["test"] == "C2 depth_correlation",
        "Batch norm: vgg16 vs vgg16_bn": c["test"] == "batchnorm vgg16_vs_vgg16_bn",
        "Batch norm: loss network in eval vs train mode": c["test"] == "batchnorm eval_vs_train_mode",
        "Claim: VGG without batch norm performs best": c["test"] == "claim vgg_without_bn_best",
        "Claim: layer vs architecture (variance shares, 95% F-test interval)":
            c["test"] == "claim layer_vs_architecture",
        "Claim: perceptual loss vs pixel baseline (95% Clopper-Pearson interval)":
            c["test"] == "claim beats_pixel_baseline",
    }
    out = {}
    for title, mask in sections.items():
        sub = c[mask]
        if not sub.empty:
            hyp = conv[conv["test"] == sub["test"].iloc[0]]["hypothesis"].iloc[0]
            out[f"{title}|{hyp}"] = sub[shown]
    return out


def _sections(df: pd.DataFrame, cells: pd.DataFrame, plan: list, conv: pd.DataFrame,
              claims: pd.DataFrame, uncertainty: dict[str, pd.DataFrame] | None = None
              ) -> list[tuple[str, str, object]]:
    """The report as (level-2 title, intro text, content) triples; content is a DataFrame, a dict of
    DataFrames, or a dict of figure lists. Shared by the Markdown and HTML renderers."""
    cov = coverage(df, plan)
    summary = coverage_summary(cov)
    failed = cov[cov["status"] != "FINISHED"][["task", "dataset", "network", "point", "seed", "status", "error"]]
    ranks = rank_table(best_points(cells)) if not cells.empty else pd.DataFrame()
    tables = {group_name(k): status_table(g).reset_index() for k, g in groups(cells)}
    return [
        ("The paper's claims, tested", "One row per finding of the paper, tested on this study (pooled over its "
                                       "benchmarks); 'benchmarks' counts the benchmarks significant on their own. "
                                       "C1 and C2 are claims of absence: 'consistent' means no significant effect. "
                                       "Every per-benchmark row is in the section Convention tests and in "
                                       "conventions.json; 'see' names the tables and figures behind each row.",
         claims),
        ("Coverage", "Planned trials (plan.json of the study run) against the runs found, by status. "
                     "Non-finished trials are listed below with their error.",
         {"summary": summary, "not finished": failed}),
        ("Average ranks", "One ranking for the study: each architecture ranked on every benchmark (task/dataset) "
                          "by its best point on the primary metric (1 = best), avg_rank = mean over benchmarks; "
                          "avg_rank_all_metrics uses each benchmark's mean rank over all its metrics; n_benchmarks "
                          "= benchmarks the network was ranked on. Pixel baselines are never ranked: see below.",
         average_ranks(ranks)),
        ("Pixel baselines", "Per benchmark, the pixel-loss baseline (network none) beside the loss networks: "
                            "(network, point) cells and architectures (best point) that beat it.",
         baseline_comparison(cells) if not cells.empty else pd.DataFrame()),
        ("Uncertainty and budget", "Seed bootstrap of the average rank: seeds resampled within each cell "
                                   "(benchmark x network x point), ranks recomputed; 95% percentile interval; "
                                   "flip_share = share of resamples in which a network and the next one swap, "
                                   f"distinguishable = flip_share <= {FLIP_ALPHA} (empty with one seed per cell). "
                                   f"Budget: per benchmark, the first epoch from which Kendall tau to the final "
                                   f"epoch's ranking stays >= {TAU} (budget.csv, tau per epoch in budget_curve.csv).",
         uncertainty or {}),
        ("Tables", "Score per network (rows, by ImageNet top-1) and point position L1-L4; "
                   "'± std (n=seeds)' when several seeds ran; the status for failed or missing cells.", tables),
        ("Convention tests", "Two-sided p-values unless stated; alpha = 0.05; see docs/ANALYSIS.md. "
                             "Every test, including per-position and per-network ones, is in conventions.json.",
         _report_tests(conv)),
    ]


def render_markdown(title: str, warnings: list[str], sections: list, figures: dict[str, list[Path]],
                    out_dir: Path) -> str:
    """The Markdown report: tables inline, figures linked relative to `out_dir`."""
    lines = [f"# {title}", ""]
    lines += [f"> **WARNING:** {w}" for w in warnings] + ([""] if warnings else [])
    for head, intro, content in sections:
        lines += [f"## {head}", "", intro, ""]
        items = content.items() if isinstance(content, dict) else [("", content)]
        for name, table in items:
            name, _, hyp = name.partition("|")
            if name:
                lines += [f"### {name}", ""]
            if hyp:
                lines += [f"Hypothesis: {hyp}.", ""]
            lines += [to_markdown(table) if not table.empty else "(none)", ""]
    lines += ["## Figures", ""]
    for kind, paths in figures.items():
        lines += [f"### {kind}", ""] + [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in paths] + [""]
    return "\n".join(lines)


def render_html(title: str, warnings: list[str], sections: list, figures: dict[str, list[Path]]) -> str:
    """A self-contained HTML report: same content as the Markdown one, figures embedded as base64 PNG."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    body += [f'<div class="warning"><b>WARNING:</b> {e(w)}</div>' for w in warnings]
    for head, intro, content in sections:
        body += [f"<h2>{e(head)}</h2>", f"<p>{e(intro)}</p>"]
        items = content.items() if isinstance(content, dict) else [("", content)]
        for name, table in items:
            name, _, hyp = name.partition("|")
            if name:
                body.append(f"<h3>{e(name)}</h3>")
            if hyp:
                body.append(f"<p><i>Hypothesis: {e(hyp)}.</i></p>")
            body.append(table.to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:.4g}", border=0)
                        if not table.empty else "<p>(none)</p>")
    body.append("<h2>Figures</h2>")
    for kind, paths in figures.items():
        body.append(f"<h3>{e(kind)}</h3>")
        for p in paths:
            data = base64.b64encode(p.read_bytes()).decode()
            body.append(f'<figure><img alt="{e(p.stem)}" src="data:image/png;base64,{data}"/>'
                        f"<figcaption>{e(p.stem)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}.warning{background:#fdd;border:2px solid #c00;"
             "padding:8px;margin:8px 0}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>")


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
    (seed-averaged), coverage.csv, rank_intervals.csv (seed bootstrap of the average rank), budget.csv and
    budget_curve.csv (the epoch a benchmark's ranking settles at), tables/ (CSV + Markdown), conventions.json
    (+ .csv), figures/ (PNG),
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
    figures = make_figures(cells, out_dir / "figures") if figures and not cells.empty else {}
    title = f"Deep perceptual loss study: {experiment}"
    warnings = problems + _warnings(df)
    sections = _sections(df, cells, plan, conv, claims, uncertainty)
    if comparison:
        sections.insert(1, ("Protocol comparison", f"{experiment} against {compare}: each claim's verdict, the "
                            "Spearman correlation of the two studies' rankings per benchmark, and the networks "
                            "whose average rank moves most (change = second - first).", comparison))
    (out_dir / "report.md").write_text(render_markdown(title, warnings, sections, figures, out_dir))
    report = out_dir / "report.html"
    report.write_text(render_html(title, warnings, sections, figures))
    if log_to_mlflow:
        run = client.create_run(exp.experiment_id, run_name="analysis",
                                tags={"dpl.kind": "analysis", "dpl.study": experiment})
        client.log_artifacts(run.info.run_id, str(out_dir))
        client.set_terminated(run.info.run_id)
    return report
