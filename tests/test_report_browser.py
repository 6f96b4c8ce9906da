"""The HTML report in a real browser: `report.html` alone, copied out of its analysis directory (as a user
mails it), opened from disk in headless Chromium with name resolution switched off.

What a person would see is checked in what Chromium did: every figure decoded (natural size = the PNG's,
drawn at a readable width), the page asked for nothing but itself and its data: images (DevTools Network
events, so Chromium's own update/time checks do not count), warnings and sections in reading order, and the
screenshots, kept under the test's tmp_path, show the warning box at the top and the heatmaps' colours. A
control page (the same report plus one external image) proves the request check sees a request when there
is one.
"""
from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _browser import chromium, visit  # noqa: F401 - chromium is a fixture
from test_report_layout import MIN_SIZE, SECTIONS, shared_report

#: No host name resolves: were the report to reach out, it would fail as it does offline.
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND",)
#: Every image's decoded size, drawn size and whether it sits in the folded "More heatmaps".
PROBE = ("Array.from(document.images, i => ({w: i.naturalWidth, h: i.naturalHeight, complete: i.complete, "
         "drawn_w: i.getBoundingClientRect().width, folded: i.closest('details') !== null}))")
WARNING_EDGE = (0xD5, 0x5E, 0x00)  # the warning box's left border (Okabe-Ito vermillion)
CIVIDIS_TOP = (254, 232, 56)  # cividis(1.0): the best cells of each heatmap


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    return shared_report(tmp_path_factory)  # read only: the page under test is a copy in tmp_path


def near(img: Image.Image, rgb: tuple[int, int, int], tol: int = 24) -> int:
    """Pixels of `img` within `tol` (per channel) of colour `rgb`."""
    a = np.asarray(img.convert("RGB"), dtype=int)
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tol).sum())


@pytest.mark.slow
def test_report_from_disk_shows_every_figure_and_requests_nothing(analysed, chromium, tmp_path):
    report = tmp_path / "report.html"
    shutil.copy(analysed / "report.html", report)  # the file alone: nothing next to it to fall back on
    figures = sorted((analysed / "figures").glob("*.png"))
    seen = visit(chromium, report.as_uri(), tmp_path / "report-full.png", PROBE, extra=OFFLINE)

    assert seen.requests[0] == report.as_uri()
    assert [u for u in seen.requests[1:] if not u.startswith("data:image/png;base64,")] == []
    assert len(seen.requests) - 1 == len(figures) == 8  # each figure loaded, from its data: URI

    images = seen.probe
    assert len(images) == len(figures)
    assert all(i["complete"] and i["w"] > MIN_SIZE[0] and i["h"] > MIN_SIZE[1] for i in images), images
    assert sorted((i["w"], i["h"]) for i in images) == sorted(Image.open(p).size for p in figures)
    shown = [i for i in images if not i["folded"]]
    assert len(shown) == 6 and all(i["drawn_w"] >= min(i["w"], 600) for i in shown), shown  # not squeezed

    full = Image.open(seen.screenshot)
    full.load()
    assert full.size[1] > sum(i["h"] for i in shown)  # the whole page, figures included
    assert near(full, CIVIDIS_TOP) > 500, "no heatmap colours in the page's screenshot"

    headings = [html.unescape(re.sub(r"<[^>]+>", "", h))
                for h in re.findall(r"<h2[^>]*>(.*?)</h2>", seen.dom, flags=re.S)]
    assert headings == SECTIONS
    first = seen.dom.index("<h2")
    assert seen.dom.index("RANDOM") < first and seen.dom.index("SYNTHETIC") < first
    top = Image.open(seen.first_screen)
    assert top.size == (1400, 1000)
    assert near(top.crop((0, 0, 1400, 300)), WARNING_EDGE) > 200, "warning box not at the top of the page"
    assert "<script" not in report.read_text()


def test_request_check_sees_an_external_image(analysed, chromium, tmp_path):
    """Control: the same report with one external <img>; an empty request list above must mean the page asked
    for nothing, not that nothing was recorded."""
    page = tmp_path / "control.html"
    page.write_text((analysed / "report.html").read_text().replace(
        "</body>", "<img alt='probe' src='http://report-probe.example/pixel.png'></body>"))
    seen = visit(chromium, page.as_uri(), tmp_path / "control.png", PROBE, extra=OFFLINE)
    assert "http://report-probe.example/pixel.png" in seen.requests
    broken = [i for i in seen.probe if i["w"] == 0]
    assert len(broken) == 1  # and the browser could not show it: offline, as intended
