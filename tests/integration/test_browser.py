"""Notebook 01 in a real JupyterLab, driven by headless Chromium (Debian's ``chromium``) through Playwright.

Needs ``/usr/bin/chromium`` (``make browser`` installs it; ``make test`` does so first).
The screenshots land in ``outputs/e2e/``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from slmops.toolkit.core import settings

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "outputs" / "e2e"
# Offline and quiet: no background networking, no first-run or sync calls to Google.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_report_in_chromium(index: Path, shot: str) -> None:
    """Open a run's ``index.html`` in Chromium: it fits the page, every plot stands beside a table, it prints.

    Saves a full-page screenshot and a PDF print to ``outputs/e2e/``.
    """
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(index.as_uri())
        page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # no sideways scrolling
        assert page.locator("h2", has_text="What this run shows").count() == 1
        assert page.locator("p.story").inner_text().startswith("Against FP32:")
        images = page.locator("img")
        assert images.count() >= 5 and all(page.evaluate("i => i.naturalWidth", images.nth(n).element_handle()) > 0
                                           for n in range(images.count()))  # every plot loads
        # Each plot stands beside its table (.pair) or right under it, in the table's own section.
        unplaced = page.evaluate("""() => [...document.images].filter(i => {
            const box = i.closest('.pair') || i.closest('section');
            return !box || !box.querySelector('table');
          }).map(i => i.alt)""")
        assert unplaced == []
        # No table beside a plot is clipped or scrolls sideways at 1280 px, and no cell is cut or reads NaN.
        clipped = page.evaluate("""() => [...document.querySelectorAll('.pair .table-wrap')]
            .filter(w => w.scrollWidth > w.clientWidth + 1).map(w => w.querySelector('th')?.innerText)""")
        assert clipped == []
        assert "NaN" not in page.locator("body").inner_text() and not any(
            "..." in text for text in page.locator("table").all_inner_texts())
        page.pdf(path=str(SHOTS / f"{shot}.pdf"))
        browser.close()
    assert all(url.startswith("file://") for url in requests)  # nothing from the network
    assert (SHOTS / f"{shot}.pdf").stat().st_size > 10_000


@pytest.fixture
def jupyterlab(tmp_path: Path, cache: Path):
    """JupyterLab on localhost serving a work folder; yields ``(base_url, token, work_dir)``."""
    work = tmp_path / "work"
    work.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, **settings.OFFLINE_ENV, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"), "SLMOPS_CACHE_DIR": str(cache),
           "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield base, token, work
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_notebook_01_in_jupyterlab(jupyterlab, tiny_model: Path, tmp_path: Path) -> None:
    import papermill
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run `make browser` (apt-get install chromium)"
    base, token, work = jupyterlab
    run_dir = tmp_path / "run"
    # The notebook as a user would open it, with parameters for a tiny model so it runs in seconds.
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "01_convert.ipynb"), str(work / "01_convert.ipynb"), prepare_only=True,
        parameters={"model_dir": str(tiny_model), "precisions": ["int4"], "compare_recipes": False,
                    "run_dir": str(run_dir)})
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)
        page.goto(f"{base}/lab/tree/01_convert.ipynb?token={token}")
        expect(page.locator(".jp-Notebook")).to_be_visible()
        dialog = page.get_by_role("dialog").filter(has_text="Select Kernel")
        try:  # a fresh JupyterLab may ask which kernel to start: the notebook's own (python3)
            dialog.get_by_role("button", name="Select", exact=True).click(timeout=10_000)
        except PlaywrightTimeout:
            pass
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()

        # The run panel converts with a progress bar and says when it is done; the picker's
        # table shows the measured int4 size.
        expect(page.get_by_text("convert done")).to_be_visible()
        table = page.locator("table.slmops-tradeoff")
        expect(table).to_contain_text("int4")
        assert "int8" not in table.inner_text()
        last_output = page.locator(".jp-OutputArea-output", has_text="Recipe comparison skipped")
        expect(last_output).to_be_visible()  # the last cell ran
        page.screenshot(path=str(SHOTS / "01_convert_after_run.png"), full_page=True)

        # Change the precision picker: the dependent table updates at once with int8's expected trade-off ...
        select = page.locator(".widget-select-multiple select")
        int8, int4 = (select.locator("option").filter(has_text=f"{p}:").inner_text() for p in ("int8", "int4"))
        select.select_option(label=[int8, int4])
        expect(table.locator("tr", has_text="int8")).to_contain_text("×0.25")
        assert "–" in table.locator("tr", has_text="int8").inner_text()  # not measured yet
        # ... and pressing Run convert builds it, after which its measured size is shown.
        page.get_by_role("button", name="Run convert").click()
        expect(page.get_by_text("convert done")).to_be_visible()
        row = table.locator("tr", has_text="int8")
        expect(row.locator("td").nth(3)).not_to_have_text("–")
        page.screenshot(path=str(SHOTS / "01_convert_int8_added.png"), full_page=True)
        browser.close()
    assert (run_dir / "models" / "int8" / "manifest.json").is_file()  # the button really converted
    assert (SHOTS / "01_convert_int8_added.png").stat().st_size > 10_000
