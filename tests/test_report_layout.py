"""The report's layout, as a reader meets it: warnings, the claims, the average rank, the paper's figures, the
tables; named columns, each network's best cell bold in HTML and Markdown, figures embedded as PNG data only,
a Markdown twin with the same sections, colour-blind-safe figures with labelled axes.

The study is a small planted one (4 networks x 4 points x 2 benchmarks, a pixel baseline on one) written to
the public MLflow schema by the planted-truth test's helpers; the expected best cells come from the values
written here, not from the analysis.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from test_analysis_planted import BENCHMARKS, planted, trials, write_store

NETWORKS = ("alexnet", "vgg11", "vgg16", "resnet50")  # two plain VGGs: the VGG claim needs two of each kind
TASKS = ("similarity", "superres")
#: The report's level-2 sections, in reading order (More heatmaps: the non-primary metrics, folded).
SECTIONS = ["The paper's claims, tested", "Average ranks", "Figures", "Tables", "Coverage", "Pixel baselines",
            "Uncertainty and budget", "Convention tests", "More heatmaps"]
MIN_SIZE = (200, 150)


def small_records() -> list[dict]:
    """The planted study cut to NETWORKS x TASKS (+ superres's pixel baseline), flagged random weights and
    synthetic data as a smoke study is."""
    recs = [r for r in trials(planted(np.random.default_rng(7)), baseline_z=0.5)
            if r["params"]["task"] in TASKS and r["params"]["network"] in (*NETWORKS, "none")]
    for r in recs:
        r["tags"] |= {"dpl.weights_random": "true", "dpl.synthetic_data": "true"}
    return recs


def build_report(tmp: Path, experiment: str = "small", figures: bool = True, records: list[dict] | None = None
                 ) -> Path:
    """Write the small study to a fresh store under `tmp`, analyse it; the analysis directory."""
    from mlflow.tracking import MlflowClient

    from analysis.report import analyze

    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(experiment, artifact_location=(tmp / f"art-{experiment}").as_uri())
    write_store(client, exp, small_records() if records is None else records)
    out = tmp / f"analysis-{experiment}"
    analyze(uri, experiment, out, log_to_mlflow=False, figures=figures)
    return out


_SHARED: dict[str, Path] = {}


def shared_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small study's analysis directory, built once per test session: this module and the browser test
    only read it (an MLflow store and an analysis with figures cost ~10 s on 2 cores)."""
    if "out" not in _SHARED:
        _SHARED["tmp"] = tmp_path_factory.mktemp("report")
        _SHARED["out"] = build_report(_SHARED["tmp"])
    return _SHARED["out"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = shared_report(tmp_path_factory)
    html = (out / "report.html").read_text()
    return {"out": out, "html": html, "md": (out / "report.md").read_text(), "doc": Doc.parse(html),
            "uri": f"sqlite:///{_SHARED['tmp']}/mlflow.db", "tmp": _SHARED["tmp"]}


# ----------------------------------------------------------------------------------------- reading the HTML
class Doc(HTMLParser):
    """The report as a flat list of what a reader meets: ("h1"|"h2"|"h3"|"warning"|"caption", text),
    ("img", attrs), ("table", header, rows) with each cell as (text, bold, title)."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple] = []
        self._text: list[str] | None = None
        self._tag = ""
        self._row: list | None = None
        self._cell: dict | None = None
        self._table: dict | None = None

    @classmethod
    def parse(cls, html: str) -> "Doc":
        doc = cls()
        doc.feed(html)
        return doc

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag in ("h1", "h2", "h3", "figcaption") or (tag == "div" and a.get("class") == "warning"):
            self._tag, self._text = ("warning" if tag == "div" else tag), []
        elif tag == "img":
            self.items.append(("img", a))
        elif tag == "table":
            self._table = {"header": [], "rows": []}
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"text": [], "bold": False, "title": a.get("title", "")}
        elif tag in ("strong", "b") and self._cell is not None:
            self._cell["bold"] = True

    def handle_endtag(self, tag: str) -> None:
        if self._text is not None and (tag == self._tag or (tag == "div" and self._tag == "warning")
                                       or (tag == "figcaption" and self._tag == "figcaption")):
            self.items.append(("caption" if self._tag == "figcaption" else self._tag, "".join(self._text).strip()))
            self._text = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(("".join(self._cell["text"]).strip(), self._cell["bold"], self._cell["title"]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            target = self._table["rows"]
            if not self._table["header"] and not self._table["rows"]:
                self._table["header"] = [c[0] for c in self._row]
            else:
                target.append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self.items.append(("table", self._table["header"], self._table["rows"]))
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"].append(data)
        if self._text is not None:
            self._text.append(data)

    def kinds(self, kind: str) -> list:
        return [i[1] for i in self.items if i[0] == kind]

    def section(self, title: str) -> list[tuple]:
        """The items of level-2 section `title` (up to the next level-2 heading)."""
        start = self.items.index(("h2", title))
        end = next((k for k in range(start + 1, len(self.items)) if self.items[k][0] == "h2"), len(self.items))
        return self.items[start + 1:end]

    def table_after(self, section: str, h3: str) -> tuple[list[str], list]:
        items = self.section(section)
        k = items.index(("h3", h3))
        table = next(i for i in items[k:] if i[0] == "table")
        return table[1], table[2]


def md_headings(md: str, level: int) -> list[str]:
    return re.findall(rf"^{'#' * level} (.+)$", md, flags=re.M)


def md_table_after(md: str, section: str, h3: str) -> list[list[str]]:
    """The first Markdown table after heading `### h3` of `## section`, as rows of cells (header first, rule
    dropped)."""
    md = md[md.index(f"## {section}\n"):]
    lines = md[md.index(f"### {h3}\n"):].splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return [rows[0]] + rows[2:]


def planted_values(metric: str) -> dict[str, dict[int, float]]:
    """{network: {position: value}} of `metric` as written to the store (the independent reference)."""
    out: dict[str, dict[int, float]] = {}
    for r in small_records():
        if metric in r["metrics"] and r["params"]["network"] != "none":
            out.setdefault(r["params"]["network"], {})[int(r["params"]["position"])] = r["metrics"][metric]
    return out


def direction_of(metric: str) -> str:
    return next(b[5][metric] for b in BENCHMARKS if metric in b[5])


def expected_best(metric: str) -> dict[str, str]:
    """Each network's best column (L1..L4), direction-aware, from the written values."""
    pick = min if direction_of(metric) == "min" else max
    return {n: f"L{pick(v, key=v.get)}" for n, v in planted_values(metric).items()}


# -------------------------------------------------------------------------------------------------- tests
def test_sections_in_reading_order_warnings_first(report):
    doc, md = report["doc"], report["md"]
    assert doc.kinds("h2") == SECTIONS
    assert md_headings(md, 2) == SECTIONS  # the Markdown twin says the same in the same order
    first_h2 = next(k for k, i in enumerate(doc.items) if i[0] == "h2")
    warnings = [i[1] for i in doc.items[:first_h2] if i[0] == "warning"]
    assert len(warnings) == 2 and "RANDOM" in warnings[0] and "SYNTHETIC" in warnings[1]
    assert md.index("**WARNING:**") < md.index("## The paper's claims, tested")
    # the figures: per benchmark (primary metric) its heatmap, accuracy scatter and depth curves, in that order
    figs = doc.section("Figures")
    assert [i[1] for i in figs if i[0] == "h3"] == ["similarity/bapps 2afc/mean", "superres/coco test/set5/psnr"]
    imgs = [i[1]["src"] for i in figs if i[0] == "img"]
    assert len(imgs) == 6
    files = [_png_file(report["out"], src).name for src in imgs]
    assert files == [f"{kind}_{stem}.png" for stem in ("similarity_bapps_2afc_mean", "superres_coco_test_set5_psnr")
                     for kind in ("heatmap", "accuracy", "depth")]
    # the non-primary metrics' heatmaps are folded away at the end
    assert report["html"].rindex("<details>") > report["html"].index("Convention tests")
    more = [_png_file(report["out"], i[1]["src"]).name for i in doc.section("More heatmaps") if i[0] == "img"]
    assert more == ["heatmap_similarity_bapps_jnd_pooled.png", "heatmap_superres_coco_test_set5_lpips.png"]


@pytest.mark.parametrize("group, metric", [("superres/coco test/set5/psnr", "test/set5/psnr"),
                                           ("superres/coco test/set5/lpips", "test/set5/lpips"),
                                           ("similarity/bapps 2afc/mean", "2afc/mean")])
def test_tables_name_their_columns_and_bold_each_networks_best_cell(report, group, metric):
    header, rows = report["doc"].table_after("Tables", group)
    points = ["L1", "L2", "L3", "L4"] + (["none"] if group.startswith("superres") else [])
    assert header == ["network", *points, "best point"]
    want = expected_best(metric)
    values = planted_values(metric)
    by_net = {r[0][0]: r for r in rows}
    assert list(by_net)[:4] == sorted(NETWORKS, key=lambda n: {"alexnet": 56.52, "vgg11": 69.02, "vgg16": 71.59,
                                                               "resnet50": 76.13}[n])  # by ImageNet top-1
    for net in NETWORKS:
        cells = dict(zip(header, by_net[net]))
        bold = [col for col, (_, b, _) in cells.items() if b]
        assert bold == [want[net]], (net, bold)
        for pos in range(1, 5):
            text, _, title = cells[f"L{pos}"]
            assert float(text) == pytest.approx(values[net][pos], rel=1e-3)
            assert title == f"p{pos}"  # the node name behind L1-L4, as a tooltip
        assert cells["best point"][0] == f"{want[net]} = p{want[net][1]}"
    # the Markdown twin bolds the same cells
    md_rows = md_table_after(report["md"], "Tables", group)
    assert md_rows[0] == ["network", *points, "best point"]
    for row in md_rows[1:]:
        if row[0] in NETWORKS:
            strong = [col for col, c in zip(md_rows[0], row) if c.startswith("**") and c.endswith("**")]
            assert strong == [want[row[0]]], row


def test_pixel_baseline_row_shows_its_value_not_missing_cells(report):
    header, rows = report["doc"].table_after("Tables", "superres/coco test/set5/psnr")
    none = dict(zip(header, next(r for r in rows if r[0][0] == "none")))
    base = next(r for r in small_records() if r["params"]["network"] == "none")["metrics"]["test/set5/psnr"]
    assert float(none["none"][0]) == pytest.approx(base, rel=1e-3)
    assert {none[f"L{p}"][0] for p in range(1, 5)} == {"–"}  # nothing was planned there: not "missing"


def test_average_rank_table_has_readable_headers_and_bold_best(report):
    header, rows = _first_table(report["doc"], "Average ranks")
    assert header == ["network", "ImageNet top-1 (%)", "similarity/bapps", "superres/coco", "average rank",
                      "average rank (all metrics)", "benchmarks"]
    col = header.index("superres/coco")
    ranks = {r[0][0]: float(r[col][0]) for r in rows}
    best = {n: max(planted_values("test/set5/psnr")[n].values()) for n in NETWORKS}
    assert ranks == pytest.approx(dict(zip(best, stats.rankdata([-v for v in best.values()]))))
    for r in rows:
        assert r[col][1] == (ranks[r[0][0]] == min(ranks.values()))


def _first_table(doc: Doc, section: str) -> tuple[list[str], list]:
    table = next(i for i in doc.section(section) if i[0] == "table")
    return table[1], table[2]


def _png_file(out: Path, src: str) -> Path:
    """The figures/ file an embedded data: URI was made from (by content)."""
    data = base64.b64decode(src.split(",", 1)[1])
    digest = hashlib.sha256(data).hexdigest()
    match = [p for p in (out / "figures").glob("*.png") if hashlib.sha256(p.read_bytes()).hexdigest() == digest]
    assert len(match) == 1, src[:60]
    return match[0]


def test_figures_are_embedded_pngs_and_nothing_points_off_the_machine(report):
    html = report["html"]
    imgs = report["doc"].kinds("img")
    assert len(imgs) == len(list((report["out"] / "figures").glob("*.png"))) == 8
    for attrs in imgs:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        im.load()  # decodes every pixel: a truncated PNG raises here
        assert im.format == "PNG" and im.size[0] > MIN_SIZE[0] and im.size[1] > MIN_SIZE[1], im.size
        assert len(set(im.convert("RGB").getdata())) > 50  # a figure, not a blank canvas
        assert attrs.get("alt"), "every figure has a text alternative"
    # no URL that would make a browser reach out: no src/href other than data: and #anchors, no url(), no
    # script, stylesheet link, frame or @import
    for attr, value in re.findall(r"""\b(src|href|action|poster|srcset)\s*=\s*['"]([^'"]*)""", html, flags=re.I):
        assert value.startswith(("data:", "#")), (attr, value[:80])
    assert not re.search(r"https?://", html.replace(report["out"].as_uri(), "")), re.search(r".{40}https?://.{40}",
                                                                                              html)
    for banned in ("<script", "<link", "<iframe", "@import", "url("):
        assert banned not in html.lower(), banned
    assert len(report["doc"].kinds("caption")) == len(imgs)


def test_markdown_twin_links_every_figure_that_exists(report):
    out, md = report["out"], report["md"]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(p.relative_to(out).as_posix() for p in (out / "figures").glob("*.png"))
    assert all((out / link).is_file() for link in links)
    figures = md[md.index("## Figures"):md.index("## Tables")]
    assert md_headings(figures, 3) == [i[1] for i in report["doc"].section("Figures") if i[0] == "h3"]
    assert "](data:" not in md and "http" not in md


def _cells(report) -> "object":
    from analysis.runs import aggregate_seeds, client_for, load_results

    df, _ = load_results(client_for(report["uri"]), "small")
    return aggregate_seeds(df)


def _group(cells, metric: str):
    return cells[cells["metric"] == metric]


def _contrast(a: tuple, b: tuple) -> float:
    """WCAG contrast ratio of two sRGB colours (formula written here, not the module's)."""
    def lum(c):
        ch = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in c[:3]]
        return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("metric, cmap", [("test/set5/psnr", "cividis"), ("test/set5/lpips", "cividis_r")])
def test_heatmap_colour_blind_palette_readable_values_and_marked_best(report, metric, cmap):
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from analysis.figures import BEST_MARK, draw_heatmap

    fig = draw_heatmap(_group(_cells(report), metric), f"superres/coco {metric}")
    try:
        ax = fig.axes[0]
        im = ax.images[0]
        assert im.cmap.name == cmap  # brighter = better whichever the metric's direction
        values = np.ma.filled(im.get_array().astype(float), np.nan)
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
        assert len(texts) == values.size  # a value (or a status) in every cell
        starred = set()
        for (i, j), t in texts.items():
            cell = im.cmap(im.norm(values[i, j]))
            assert _contrast(mcolors.to_rgba(t.get_color()), cell) >= 4.5, (t.get_text(), t.get_color())
            v = values[i, j]  # printed to 3 significant digits
            assert abs(float(t.get_text().rstrip(BEST_MARK)) - v) <= 0.5 * 10 ** (np.floor(np.log10(abs(v))) - 2)
            if t.get_text().endswith(BEST_MARK):
                starred.add((i, j))
        rows = [t.get_text() for t in ax.get_yticklabels()]
        cols = [t.get_text() for t in ax.get_xticklabels()]
        assert cols == ["L1", "L2", "L3", "L4"] and "none" not in rows  # the baseline is in the title instead
        want = expected_best(metric)
        assert starred == {(rows.index(n), cols.index(want[n])) for n in NETWORKS}
        boxes = {(round(p.get_y() + 0.47), round(p.get_x() + 0.47)) for p in ax.patches}
        assert boxes == starred  # marked by a box too: not by colour alone
        label = fig.axes[1].get_ylabel().replace("\n", " ")  # the colour bar
        assert "PSNR" in label and "dB" in label and "higher is better" in label if metric.endswith("psnr") \
            else "lower is better" in label
        assert "pixel-loss baseline" in ax.get_title()
    finally:
        plt.close(fig)


def test_scatter_and_depth_curves_label_axes_and_use_okabe_ito(report):
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from analysis.figures import OKABE_ITO, draw_accuracy, draw_depth
    from analysis.tables import best_points

    cells = _cells(report)
    g = _group(cells, "2afc/mean")
    fig = draw_accuracy(best_points(g), "similarity/bapps 2afc/mean")
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() == "ImageNet top-1 accuracy (%)"
        assert "2AFC score" in ax.get_ylabel() and "higher is better" in ax.get_ylabel()
        top1 = {"alexnet": 56.52, "vgg11": 69.02, "vgg16": 71.59, "resnet50": 76.13}
        best = {n: max(v.values()) for n, v in planted_values("2afc/mean").items()}
        ref = stats.spearmanr([top1[n] for n in NETWORKS], [best[n] for n in NETWORKS])
        assert f"rho = {ref.statistic:.2f}, p = {ref.pvalue:.2g}, n = 4" in ax.get_title()
        palette = {mcolors.to_hex(c) for c in OKABE_ITO}
        assert {mcolors.to_hex(c) for c in ax.collections[0].get_facecolors()} <= palette
        assert all(mcolors.to_hex(line.get_color()) in palette for line in ax.lines)
    finally:
        plt.close(fig)
    fig = draw_depth(g, "similarity/bapps 2afc/mean")
    try:
        assert fig._supxlabel.get_text() == "relative depth of extraction point (0 = input, 1 = last layer)"
        assert "higher is better" in fig._supylabel.get_text()
        lines = [line for ax in fig.axes for line in ax.lines]
        assert sorted(line.get_label() for line in lines) == sorted(NETWORKS)
        assert all(mcolors.to_hex(line.get_color()) in palette for line in lines)
        for ax in fig.axes:  # within a panel, lines differ in colour and in marker
            styles = [(mcolors.to_hex(line.get_color()), line.get_marker()) for line in ax.lines]
            assert len({s[0] for s in styles}) == len(styles) == len({s[1] for s in styles})
    finally:
        plt.close(fig)


def test_sections_without_data_say_so_in_one_line(report):
    """No pixel baseline, one benchmark, figures off: those sections say why they are empty, no empty table."""
    recs = [r for r in small_records() if r["params"]["task"] == "similarity"]
    out = build_report(report["tmp"], "bare", figures=False, records=recs)  # a second study, same store
    doc = Doc.parse((out / "report.html").read_text())
    md = (out / "report.md").read_text()
    for section, line in [("Figures", "Figures were not drawn"), ("Pixel baselines", "No pixel-baseline trial")]:
        items = doc.section(section)
        assert not [i for i in items if i[0] in ("table", "img")], section
        assert line in (out / "report.html").read_text() and line in md
    assert "Every trial finished." in md
    assert "More heatmaps" not in doc.kinds("h2")


def test_every_title_and_label_fits_inside_the_figure_even_for_one_network_and_one_point(report):
    """A smoke study's figures (1 network x 1 point, one constant value): each text (titles, axis and colour-bar
    labels, ticks) is drawn inside the figure, and the colour bar spans a readable range around the value."""
    import matplotlib.pyplot as plt

    from analysis.figures import draw_accuracy, draw_depth, draw_heatmap
    from analysis.tables import best_points

    cells = _cells(report)
    one = cells[(cells["metric"] == "2afc/mean") & (cells["network"] == "alexnet")]
    one = one[one["point"] == one["point"].iloc[0]]
    name = "autoencoder/svhn probe/best_val_test_acc"  # the longest benchmark name of the four tasks
    for draw, arg in ((draw_heatmap, one), (draw_accuracy, best_points(one)), (draw_depth, one)):
        fig = draw(arg, name)
        try:
            fig.canvas.draw()
            texts = [t.get_text() for t in fig.findobj(plt.Text) if t.get_visible()]
            assert any(name.split()[0] in t for t in texts), draw.__name__
            drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, of what was drawn (text included)
            w, h = fig.get_size_inches()
            assert drawn.x0 >= -0.02 and drawn.y0 >= -0.02 and drawn.x1 <= w + 0.02 and drawn.y1 <= h + 0.02, (
                draw.__name__, drawn, (w, h))
            if draw is draw_heatmap:
                lo, hi = fig.axes[0].images[0].norm.vmin, fig.axes[0].images[0].norm.vmax
                assert hi - lo >= 0.05 * abs(one["value"].iloc[0]), (lo, hi)
        finally:
            plt.close(fig)
