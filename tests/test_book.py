"""The book as a reader meets it: generated pages checked against a smoke run, then the
built book opened in a real browser (Debian's chromium, headless, offline)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orandnet_lib.methods.refine import REFINEMENTS

from orandnet_lib.book import pages as bookpages

from conftest import REPO

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = REPO / "_build" / "screenshots"


def test_results_page_matches_the_summary(smoke_run):
    result, _ = smoke_run
    page = bookpages.results_page(result.summary)
    seg = result.summary["segmentation"]
    for tset, by in seg.items():
        for sched, entry in by.items():
            row = next(line for line in page.splitlines() if line.startswith(f"| {tset} | {sched} |"))
            assert f"| {entry['miou']:.1f} |" in row and f"| {len(entry['seeds'])} |" in row
    for variant, written in result.summary["pseudo_masks"].items():
        assert f"| {variant} | {REFINEMENTS.label(written['refinement'])} | {written['miou']:.1f} |" in page
    total = sum(s["wall_time_s"] for s in result.summary["stages"].values())
    assert f"Total wall time of the stages: {total / 60:.1f} min." in page


def test_parameters_page_lists_every_parameter_and_profile_override():
    page = bookpages.parameters_page(REPO / "notebooks")
    from orandnet_lib.book.runner import notebook_parameters

    for nb in sorted((REPO / "notebooks").glob("0*.ipynb")):
        assert f"## {nb.stem}" in page
        section = page.split(f"## {nb.stem}")[1].split("\n## ")[0]
        for name in notebook_parameters(nb):
            if name not in ("profile", "data_root", "run_dir"):
                assert f"| `{name}` |" in section, (nb.stem, name)
    # the smoke profile trains stage 5 for 2 epochs: the override shows in its column
    row = next(line for line in page.split("## 05_segmentation_curriculum")[1].splitlines() if line.startswith("| `epochs` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "`2`" and cells[3] == ""  # smoke overrides; default uses the notebook's value


@pytest.fixture(scope="session")
def built_book(request, tmp_path_factory):
    """A book built from the smoke run, or the one ORANDNET_BOOK_HTML names (check the real
    `make book` output: ORANDNET_BOOK_HTML=_build/html pytest tests/test_book.py -k browser)."""
    import os

    if os.environ.get("ORANDNET_BOOK_HTML"):
        return Path(os.environ["ORANDNET_BOOK_HTML"]).resolve()
    smoke_run = request.getfixturevalue("smoke_run")
    if not (REPO / "_static" / "widgets" / "embed-amd.js").exists():
        pytest.skip("widget manager not installed: run `make widgets-js` (npm)")
    result, base = smoke_run
    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("executed", "generated"))
    shutil.copytree(base / "book" / "executed", root / "book" / "executed")
    shutil.copytree(REPO / "_static", root / "_static")
    shutil.copytree(REPO / ".cache" / "html_extra", root / ".cache" / "html_extra")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    bookpages.write_pages(root, "smoke", summary=result.summary)
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", "--all", str(root)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = root / "_build" / "html"
    assert (html / "index.html").exists()
    return html


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_every_page_loads_offline_without_errors_and_the_widget_reacts(built_book):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    toc_pages = ["book/intro"] + [line.split("file:")[1].strip() for line in (REPO / "_toc.yml").read_text().splitlines()
                                  if "file:" in line]
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(built_book))
    # No page may show where this machine keeps the project, its runs or temporary folders.
    machine_paths = {str(REPO), str(Path.home()), "/tmp/pytest-of-", str(built_book.parent.parent)}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    report = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            outside: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}")
                    if r.url.startswith(origin) else None)

            def offline(route):  # the book must not need the network
                if route.request.url.startswith(origin) or route.request.url.startswith("data:"):
                    return route.continue_()
                outside.append(route.request.url)
                return route.abort()

            page.route("**/*", offline)
            for doc in toc_pages:
                problems.clear()
                response = page.goto(f"{origin}/{doc}.html", wait_until="networkidle")
                assert response is not None and response.ok, doc
                broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                                       ".map(i => i.src)")
                shot = SCREENSHOTS / f"{doc.replace('/', '_')}.png"
                page.screenshot(path=str(shot), full_page=True)
                report[doc] = {"screenshot": str(shot), "images": page.evaluate("document.images.length")}
                assert not broken, (doc, broken)
                assert not problems, (doc, problems)
                text = page.evaluate("document.body.innerText")
                for local in machine_paths:
                    assert local not in text, f"{doc} shows an absolute path of this machine ({local})"
                if doc.startswith("book/executed/"):
                    widths = page.evaluate("Array.from(document.querySelectorAll('.tag_headline-figure img'))"
                                           ".map(i => i.getBoundingClientRect().width)")
                    assert widths and max(widths) >= 600, f"{doc}: its headline figure renders {widths} px wide"
                    report[doc]["headline_px"] = max(widths)
                if doc.endswith("02_or_and_ensembles"):
                    slider = page.locator(".widget-hslider .noUi-handle, .widget-slider .noUi-handle").first
                    slider.wait_for(timeout=30000)

                    def marker_panel():
                        return page.evaluate("Array.from(document.querySelectorAll('.widget-image'))"
                                             ".filter(e => e.offsetParent !== null).map(e => e.src)")

                    before = marker_panel()
                    slider.focus()
                    page.keyboard.press("ArrowRight")
                    page.wait_for_timeout(500)
                    assert len(before) == 1 and marker_panel() != before, "the threshold explorer must react"
                    report[doc]["threshold_explorer_reacts"] = True
                if doc.endswith("06_precision_vs_miou"):
                    page.wait_for_selector(".widget-hslider, .widget-slider", timeout=30000)

                    def shown():
                        return page.evaluate("Array.from(document.querySelectorAll('.widget-image'))"
                                             ".filter(e => e.offsetParent !== null).map(e => e.src)")

                    before = shown()
                    assert len(before) == 1, f"one panel should show, found {len(before)}"
                    handle = page.locator(".widget-hslider .noUi-handle, .widget-slider .noUi-handle").first
                    handle.focus()
                    page.keyboard.press("ArrowRight")
                    page.wait_for_timeout(500)
                    after = shown()
                    assert len(after) == 1 and after != before, "moving the slider must change the panel"
                    page.screenshot(path=str(SCREENSHOTS / "widget_after_slider.png"), full_page=False)
                    report[doc]["widget_reacts"] = True
            assert not outside, f"pages asked for outside resources: {sorted(set(outside))[:5]}"
            browser.close()
    finally:
        server.shutdown()
    (SCREENSHOTS / "report.json").write_text(json.dumps(report, indent=2))
    assert set(report) == set(toc_pages)
