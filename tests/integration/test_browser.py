"""A `slmops lab` workspace in a real JupyterLab, driven by headless Chromium (Debian's ``chromium``) through Playwright.

Needs ``/usr/bin/chromium`` (``make browser`` installs it; ``make test`` does so first).
The screenshots land in ``outputs/e2e/``.
"""

from __future__ import annotations

import json
import os
import re
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
from slmops.toolkit.core.artifacts import read_json
from slmops.toolkit.domain import run_params
from slmops.toolkit.domain.results.registration import read_registered
from slmops.toolkit.presentation.compare import read_comparison
from slmops.toolkit.stages.checklist import read_report

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


def _kernel_idle(base: str, token: str, notebook: str) -> bool:
    """Whether the Jupyter server holds a session of ``notebook`` whose kernel has started and is idle."""
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as response:
        sessions = json.load(response)  # the Jupyter server's REST API: its own session models
    return any(s["path"].endswith(notebook) and (s.get("kernel") or {}).get("execution_state") == "idle"
               for s in sessions)


def _open(page, base: str, token: str, notebook: str, timeout_s: float = 120.0) -> None:
    """Open ``notebook`` in JupyterLab, wait until its kernel is started and idle, and Run All.

    Ready is the server's word: the notebook's session with an idle kernel. A JupyterLab that asks which kernel
    to start instead (an older one did, for a fresh workspace) is answered with the notebook's own (python3).
    """
    from playwright.sync_api import expect

    page.goto(f"{base}/lab/tree/{notebook}?token={token}")
    expect(page.locator(".jp-Notebook").last).to_be_visible()  # JupyterLab restores the tabs opened before
    dialog = page.get_by_role("dialog").filter(has_text="Select Kernel")
    deadline = time.monotonic() + timeout_s
    while not _kernel_idle(base, token, notebook):
        if dialog.count():
            dialog.get_by_role("button", name="Select", exact=True).click()
        assert time.monotonic() < deadline, f"{notebook}'s kernel was not idle within {timeout_s:.0f} s"
        page.wait_for_timeout(100)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()


def _unreadable_tables(page) -> list[str]:
    """What the tables of the notebook in front show that no table may: an index column, NaN or None, a cell cut to
    ``...``, a blank heading, a word broken across lines (empty: nothing). Read from the rendered page, widgets'
    outputs included."""
    return page.evaluate("""() => {
      const shown = [...document.querySelectorAll('.jp-NotebookPanel')].filter(p => p.getBoundingClientRect().width > 0);
      const wrong = [];
      for (const table of shown.at(-1).querySelectorAll('.jp-OutputArea-output table')) {
        if (table.querySelector('tbody th')) wrong.push('index column in: ' + table.textContent.slice(0, 60));
        for (const th of table.querySelectorAll('thead th')) if (!th.textContent.trim()) wrong.push('a blank heading');
        for (const td of table.querySelectorAll('td')) {
          const text = td.textContent.trim();
          if (['NaN', 'nan', 'None', 'absent'].includes(text) || text.endsWith('...')) wrong.push(text);
        }
        for (const cell of table.querySelectorAll('th, td')) {  // a squeezed column breaks words letter by letter
          const node = cell.firstChild;
          if (!node || node.nodeType !== Node.TEXT_NODE) continue;
          for (const word of node.textContent.matchAll(/[A-Za-z0-9]{2,}/g)) {
            const range = document.createRange();
            range.setStart(node, word.index);
            range.setEnd(node, word.index + word[0].length);
            if (range.getClientRects().length > 1) { wrong.push('a word broken across lines: ' + word[0]); break; }
          }
        }
      }
      return wrong;
    }""")


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_lab_workspace_in_jupyterlab(jupyterlab, tiny_model: Path, tmp_path: Path) -> None:
    """The first hour as a user has it: a workspace made by `slmops lab`, every choice made in the browser
    before anything runs, work started by the buttons, the chat while the kernel is busy, the base as a model."""
    from playwright.sync_api import expect, sync_playwright

    from slmops.toolkit import cli
    from slmops.toolkit.stages import finetune

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run `make browser` (apt-get install chromium)"
    base, token, work = jupyterlab
    before = _git_status()
    data = tmp_path / "facts.jsonl"
    data.write_text(json.dumps({"question": "Capital?", "answer": "Quennport.", "paraphrase": "Its capital?",
                                "expect": ["Quennport"]}))
    adapter = finetune.finetune(finetune.FinetuneSpec(base=tiny_model, out=tmp_path / "lora", data=data, rank=4,
                                                      steps=2, batch=1), progress=False).adapter
    settings_ = {"model_dir": tiny_model, "adapter": adapter, "name_prefix": "browser", "precisions": "[int4]",
                 "compare_recipes": "false", "checklist_requests": 0, "prompt_lengths": "[16]", "gen_lengths": "[4]",
                 "repeats": 1, "warmup": 0}
    assert cli.main(["lab", str(work), "--print", *(f"--set={k}={v}" for k, v in settings_.items())]) == 0
    # The same parameters from a shell (`slmops run`), with the precisions the browser is about to choose: notebook
    # 05 compares the two runs. It runs beside the browser, with a Foundry cache of its own (same model names).
    cli_dir = tmp_path / "cli"
    cli_run = subprocess.Popen(
        [str(Path(sys.executable).with_name("slmops")), "run", "--params", str(work / "params.json"), "--set",
         "precisions=[int8, int4]", "-o", str(cli_dir), "-q"],
        env={**os.environ, "SLMOPS_CACHE_DIR": str(tmp_path / "cli-cache")}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("dialog", lambda dialog: dialog.accept())  # leaving a notebook with unsaved outputs
        page.set_default_timeout(300_000)
        expect.set_options(timeout=300_000)

        # 01: Run All shows the pickers and waits; a precision is added before anything is built.
        _open(page, base, token, "01_convert.ipynb")
        expect(page.get_by_text("press Run convert to start")).to_be_visible()
        assert not (work / "models").exists()
        select = page.locator(".widget-select-multiple select")
        int8, int4 = (select.locator("option").filter(has_text=f"{p}:").inner_text() for p in ("int8", "int4"))
        select.select_option(label=[int8, int4])
        page.get_by_role("button", name="Run convert").click()
        expect(page.get_by_text("convert done")).to_be_visible()
        assert _unreadable_tables(page) == []
        expect(page.locator("table.slmops-tradeoff tr", has_text="int8").locator("td").nth(3)).not_to_have_text("-")
        page.screenshot(path=str(SHOTS / "lab_01_converted.png"), full_page=True)
        # offline: JupyterLab's installed settings defaults stop it asking to fetch Jupyter's news
        expect(page.get_by_text("official Jupyter news")).to_have_count(0, timeout=5_000)
        assert run_params.parse(read_json(work / "params.json")).precisions == ["int8", "int4"]  # recorded

        # 02: a template the preview flags is refused in one line; the edited one is the one registered.
        _open(page, base, token, "02_register.ipynb")
        expect(page.get_by_text("press Run register to start")).to_be_visible()
        system = page.locator(".widget-textarea", has_text="system").locator("textarea")
        good = system.input_value()
        system.fill("SYSTEM without its placeholder")
        page.get_by_role("button", name="Run register").click()
        expect(page.get_by_text("✗ PromptTemplate.system must contain {Content} exactly once")).to_be_visible()
        assert not (work / "registered.json").exists()
        system.fill("[system] " + good)
        page.get_by_role("button", name="Run register").click()
        expect(page.get_by_text("register done")).to_be_visible()
        registered = read_registered(work / "registered.json")
        assert {m.template for m in registered} == {"custom"} and len(registered) == 2

        # The chat: a question typed while the kernel is busy (the endpoint starting) arrives whole.
        page.get_by_role("button", name="Run endpoint").click()
        question = "What is the capital of Veloria, in one word?"
        box = page.get_by_placeholder("Ask something; Enter sends")
        box.fill(question)
        box.press("Enter")
        transcript = page.locator(".widget-html", has_text="chat with")
        expect(transcript).to_contain_text(f"you: {question}")
        expect(page.get_by_text("endpoint done")).to_be_visible()
        # ... and the base (the fine-tune's control) is a model one can talk to.
        models = page.locator(".widget-dropdown").filter(has=page.locator("label", has_text=re.compile(r"^Model$")))
        models.locator("select").select_option("browser-base")
        box.fill("Hello, base?")
        page.get_by_role("button", name="Send").click()
        expect(transcript).to_contain_text("chat with browser-base")
        expect(transcript).to_contain_text("you: Hello, base?")
        page.screenshot(path=str(SHOTS / "lab_02_registered_and_chat.png"), full_page=True)

        # 03 and 04 through their buttons.
        _open(page, base, token, "03_test.ipynb")
        page.get_by_role("button", name="Run test").click()
        expect(page.get_by_text("test done")).to_be_visible()
        assert _unreadable_tables(page) == []
        _open(page, base, token, "04_benchmark.ipynb")
        page.get_by_role("button", name="Run benchmark").click()
        expect(page.get_by_text("benchmark done")).to_be_visible()
        assert _unreadable_tables(page) == []
        page.screenshot(path=str(SHOTS / "lab_04_benchmark.png"), full_page=True)

        # 05: this run against the CLI run of the same parameters, picked among the runs beside it.
        output, _ = cli_run.communicate(timeout=600)
        assert cli_run.returncode == 0, output
        _open(page, base, token, "05_compare.ipynb")
        expect(page.get_by_text("press Run compare to start")).to_be_visible()
        page.get_by_placeholder("a run folder: pick one or type its path").fill(str(cli_dir))
        page.get_by_role("button", name="Run compare").click()
        expect(page.get_by_text("compare done")).to_be_visible()
        compared = read_comparison(work / "compare" / "compare.json")
        headline = page.locator(".jp-RenderedMarkdown strong", has_text=re.compile(r"^(PASS|WARN|FAIL): "))
        expect(headline).to_have_text(compared.headline)  # the headline the tables under it agree with
        assert compared.headline.startswith(compared.status.upper())
        # Every parameter recorded in both runs (none "absent"), the machines' too (no "None now").
        assert [row.parameter for row in compared.params] == []
        shown = "\n".join(page.locator(".jp-NotebookPanel", has=headline).locator(".jp-OutputArea-output")
                          .all_inner_texts())
        assert "Parameters: the same." in shown and not re.search(r"\babsent\b|\bNone\b|\bNaN\b", shown), shown
        assert _unreadable_tables(page) == []
        assert {row.precision for row in compared.sizes} == {"int8", "int4"}
        headline.scroll_into_view_if_needed()  # JupyterLab scrolls inside the notebook: bring the results in view
        page.screenshot(path=str(SHOTS / "lab_05_compare.png"), full_page=True)
        browser.close()
    assert read_report(work / "test.json").control.model == "browser-base"  # the negative control ran, as in `slmops run`
    assert (work / "bench.json").is_file() and (work / "run.json").is_file()
    assert cli.main(["report", str(work)]) == 0  # the interactive run is a run the CLI reads
    assert (work / "index.html").read_text().count(": ran</li>") == 4  # its four notebooks ran (in JupyterLab)
    assert _git_status() == before  # nothing in the checkout was written
