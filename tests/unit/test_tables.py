"""One table renderer for the notebooks and the report: headings with units, no index, nothing cut, no NaN."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

from slmops.toolkit.core import codec
from slmops.toolkit.domain.results.bench import BenchFile
from slmops.toolkit.domain.results.checklist import (
    Bound,
    Check,
    CheckResult,
    ModelReport,
    QualityRecord,
    Thresholds,
    Unit,
    verdict_of,
)
from slmops.toolkit.domain.results.checklist_file import dump_report, load_report
from slmops.toolkit.presentation import checklist_tables, report
from slmops.toolkit.presentation.tables import html_table
from slmops.toolkit.stages.checklist import quality_checks
from tests.unit.test_compare import write_run

NOTE = ("Without a system message the model's chat template adds its own default system text; register with "
        "--template to keep the fine-tune's prompt shape, or pass a system message with every request so the "
        "answers match what the fine-tune saw in training.")


def _cells(page: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", page, re.DOTALL)


def test_a_table_has_worded_headings_with_units_no_index_and_every_cell_whole() -> None:
    rows = [{"model": "m-int4", "decode_tps": 120.456, "peak_rss_mib": None, "top1_agreement": float("nan"),
             "notes": NOTE, "checks_failed": "<none>"}]
    page = html_table(rows)
    headings = re.findall(r"<th>(.*?)</th>", page)
    assert headings == ["model", "decode (tok/s)", "peak RSS (MiB)", "top-1 vs FP32", "notes", "checks failed"]
    cells = _cells(page)
    assert len(cells) == len(headings)  # no index column: one cell per heading
    assert cells[:4] == ["m-int4", "120", "-", "-"] and "NaN" not in page and "nan" not in page.lower()
    assert NOTE.replace("'", "&#x27;") in page and "..." not in page and "…" not in page  # wrapped, never cut
    assert "&lt;none&gt;" in page  # text is escaped, never markup
    assert "white-space:normal" in page  # a notebook's table carries the style that wraps its cells
    # ... between words (a squeezed column broke "browser" one letter a line); a wide table scrolls in its own box.
    assert "anywhere" not in page and "overflow-wrap:break-word" in page and "overflow-x:auto" in page


def test_notebooks_get_the_reports_renderer() -> None:
    shown = report.table([{"name": "m-int4", "notes": NOTE}, {"name": "m-fp32", "notes": None}], ["name", "notes"])
    assert shown._repr_html_() == str(shown) == str(html_table([{"name": "m-int4", "notes": NOTE},
                                                                {"name": "m-fp32", "notes": None}], ["name", "notes"]))
    assert _cells(shown)[-1] == "-"


def test_the_precision_pickers_table_is_drawn_by_the_same_renderer() -> None:
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.domain.results.deployment import PrecisionFigures
    from slmops.widgets import pickers

    page = pickers.tradeoff_table((Precision.FP32, Precision.INT4),
                                  {"fp32": PrecisionFigures("", "fp32", size_mb=540.0, x_fp32=1.0)})
    assert 'class="slmops slmops-tradeoff"' in page and "<thead>" in page  # a heading row, not a first body row
    assert re.findall(r"<th>(.*?)</th>", page)[3:] == ["size (MB)", "× FP32", "top-1 vs FP32", "decode (tok/s)"]
    assert "–" not in page and _cells(page)[-1] == "-"  # an INT4 not built yet: nothing measured, said as "-"


def _report(failing: set[str], cases: int = 48) -> list[ModelReport]:
    models = []
    for model in ("m-int4", "m-int8"):
        checks = [CheckResult(model, Check.DOMAIN if i % 2 else Check.HELDOUT, f"case-{i}", 1.0, Unit.SHARE, 1.0,
                              Bound.AT_LEAST, verdict_of(not (model == "m-int4" and f"case-{i}" in failing)),
                              "contains any of [x]", answer=f"answer {i} " + NOTE) for i in range(cases)]
        quality = QualityRecord("m-fp32", 0.6659, 0.4321, 15.0, 10.0, 300)
        models.append(ModelReport(model, checks + quality_checks(model, quality, Thresholds()), quality=quality))
    return [*models, ModelReport("m-fp32", [])]


def test_the_whole_checklist_shows_collapsible_by_check_failures_first() -> None:
    reports = _report({"case-7"})
    page = checklist_tables.checklist_details(reports)
    sections = re.findall(r"<details class=\"slmops\"( open)?><summary>(.*?)</summary>", page)
    assert [summary.split(":")[0] for _, summary in sections] == ["domain", "heldout", "quality"]
    assert sections[0] == (" open", "domain: m-int4 23/24 pass, m-int8 24/24 pass (failures first)")
    assert sections[1][0] == ""  # a check without a failure starts closed
    assert all(f">case-{i}<" in page for i in range(48))  # every case, not the first ten
    first_domain_row = page.split("<summary>domain")[1].split("<tbody>")[1].split("</tr>")[0]
    assert "case-7" in first_domain_row  # the failing case leads its check
    assert NOTE.replace("'", "&#x27;") in page and "NaN" not in page


def test_the_quality_table_shows_numbers_and_the_reference_says_so() -> None:
    rows = checklist_tables.quality_rows(_report(set()))
    assert [row["model"] for row in rows] == ["m-int4", "m-int8", "m-fp32"]
    assert rows[0]["kl_divergence"] == 0.4321 and isinstance(rows[0]["top1_agreement"], float)
    assert rows[2]["top1_agreement"] == rows[2]["kl_divergence"] == "reference"
    page = html_table(rows)
    assert "<th>KL (nats)</th>" in page and "perplexity 15" not in page and "NaN" not in page
    assert not any(math.isnan(v) for row in rows for v in row.values() if isinstance(v, float))


def test_the_report_page_has_no_index_nan_or_cut_cell_and_stacks_tables_above_plots(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    tests = load_report(json.loads((run / "test.json").read_text()))
    tests.models[0].checks.append(CheckResult("m-int4", Check.DOMAIN, "long", 1.0, Unit.SHARE, 1.0, Bound.AT_LEAST,
                                              verdict_of(True), "t", answer=NOTE))
    (run / "test.json").write_text(json.dumps(dump_report(tests)))
    (run / "models" / "convert.json").unlink()  # this fixture's is too thin for the conversion table
    bench = codec.read(BenchFile, run / "bench.json")
    sizes = {"fp32": 100.0, "int4": 40.0}
    codec.write(run / "bench.json", replace(bench, rows=tuple(replace(row, size_mb=sizes[row.precision])
                                                              for row in bench.rows)))
    (run / "03_test.html").write_text("<html></html>")  # a notebook that ran (its checks fail: it is no "ok")
    page = report.write_index(run).read_text()
    assert "NaN" not in page and "..." not in page and "<th></th>" not in page
    assert not re.search(r"\bok\b", page)
    # A notebook ran when its page was rendered or its stage's results are there (run in JupyterLab: no page).
    items = re.findall(r"<li>(.*?)</li>", page, re.DOTALL)
    assert [next(i for i in items if name in i).rsplit(": ", 1)[1] for name in report.NOTEBOOKS] == [
        "not run", "not run", "ran", "ran"]
    assert NOTE.replace("'", "&#x27;") in page and "<details" in page
    fp32 = next(row for row in re.findall(r"<tr>(.*?)</tr>", page) if ">fp32<" in row and "reference" in row)
    assert "reference" in fp32  # FP32's top-1 cell against itself
    css = (Path(report.__file__).parent / "pages" / "report.css").read_text()
    assert "minmax(0, 3fr)" not in css and "overflow-wrap: anywhere" in css  # no table squeezed beside a plot


def test_whole_numbers_read_whole_in_every_engines_rows() -> None:
    """Foundry Local's generated tokens are a mean written as 4.0, the direct engine's a count written as 4: both
    read 4, and a mean that is not whole keeps its decimals."""
    bench = codec.load(BenchFile, {"rows": [{"engine": "foundry-local", "gen_tokens": 4.0},
                                            {"engine": "ort-genai", "gen_tokens": 4},
                                            {"engine": "foundry-local", "gen_tokens": 3.75}]})
    cells = re.findall(r'<td class="num">([^<]*)</td>', html_table(list(bench.rows), ["gen_tokens"]))
    assert cells == ["4", "4", "3.75"]
