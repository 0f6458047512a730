"""The run report: report.html after every run (succeeded or failed), opened in a real headless Chromium."""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from pipelines import cli
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.pipeline import run_pipeline
from pipelines.report import REPORT
from pipelines.report.content import fmt

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PNG = b"\x89PNG\r\n\x1a\n"
STAGE_ROWS = (
    "return [...document.querySelectorAll('#stages tbody tr')].map(r => [...r.cells].slice(0, 2).map(c => c.innerText))"
)
INLINE_ONLY = (
    "return [...document.querySelectorAll('[src]')].every(e => e.getAttribute('src').startsWith('data:image/png'))"
)


def _fair(runs_dir: Path, *overrides: str):
    return load_config(ROOT / "conf" / "fair.yaml", [f"runs_dir={runs_dir}", *overrides])


@pytest.fixture(scope="module")
def fair_run(tmp_path_factory, dask_engine) -> Path:
    """A real run of conf/fair.yaml (ingest + linear regression) on the Dask engine."""
    return run_pipeline(_fair(tmp_path_factory.mktemp("runs")), engine=dask_engine).run.dir


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, dask_engine) -> Path:
    """A real run whose model stage fails at fit (its feature column does not exist after encoding)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.raises(ConfigError, match="no_such_column"):
        run_pipeline(_fair(root, "stages.1.features=[no_such_column]"), engine=dask_engine)
    return next(p for p in (root / "fair").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Selenium with Debian's chromedriver (Selenium Manager never downloads)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no /usr/bin/chromium or /usr/bin/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def full_page_png(driver, path: Path, width: int = 1280) -> tuple[int, int]:
    """Save a screenshot of the whole page (not just the window) and return its size."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return width, height


@pytest.mark.slow
def test_every_run_leaves_a_report_that_renders_in_chromium(fair_run, browser, tmp_path):
    report = fair_run / REPORT
    assert report.is_file(), "run_pipeline writes report.html at the end of the run"
    manifest = json.loads((fair_run / "manifest.json").read_text())
    metrics = json.loads((fair_run / "metrics.json").read_text())
    written = sorted(p.relative_to(fair_run).as_posix() for p in fair_run.rglob("*.png"))
    assert written == ["plots/lm/predicted_vs_actual.png"]

    browser.get(report.as_uri())
    images = browser.execute_script("return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    assert sorted(alt for alt, _, _ in images) == written  # every plot the run wrote, and nothing else
    assert all(done and width > 0 for _, done, width in images), images  # no broken image
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []

    # self-contained: images inline, no script, stylesheet or frame, every link relative to the run directory
    assert browser.execute_script(INLINE_ONLY)
    assert browser.execute_script("return document.querySelectorAll('script, link, iframe, object').length") == 0
    hrefs = browser.execute_script("return [...document.links].map(a => a.getAttribute('href'))")
    assert hrefs and not [h for h in hrefs if "://" in h]
    assert (fair_run / "quarantine.csv").is_file() and "quarantine.csv" in hrefs

    rows = browser.execute_script(STAGE_ROWS)
    assert rows == [["ingest", "succeeded"], ["lm", "succeeded"]]
    text = browser.find_element("tag name", "body").text
    ingest = manifest["stages"][0]
    for key in ("read", "accepted", "rejected"):
        assert f"{key} {fmt(ingest[key])}" in text  # the ingest counts in the stages table
    assert fmt(metrics["lm"]["test_r2"]) in text and fmt(metrics["lm"]["summary"]["r_squared"]) in text
    summary = (fair_run / "models" / "lm" / "summary.txt").read_text()
    shown = browser.execute_script("return document.querySelector('pre.summary').textContent")
    assert shown == summary  # the R-style summary
    assert manifest["engine"]["scheduler"] in text and "workers" in text  # engine facts
    assert "name: fair" in browser.find_element("css selector", "#config pre").text

    width, height = full_page_png(browser, tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes().startswith(PNG) and height > 900


@pytest.mark.slow
def test_a_failed_run_gets_a_report_naming_its_error(failed_run, browser):
    manifest = json.loads((failed_run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "no_such_column" in manifest["error"]
    failed_stage = next(s for s in manifest["stages"] if s["status"] == "failed")
    browser.get((failed_run / REPORT).as_uri())
    assert browser.find_element("css selector", "#run-error").text == manifest["error"]
    rows = browser.execute_script(STAGE_ROWS)
    assert rows == [["ingest", "succeeded"], ["lm", "failed"]]  # what finished, and what did not
    assert failed_stage["error"] in browser.find_element("id", "stage-lm").text
    assert "stage lm failed" in browser.find_element("id", "log-tail").text  # the log's end, shown open
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_pipelines_report_rebuilds_the_report(fair_run, capsys):
    report = fair_run / REPORT
    report.unlink()
    assert cli.main(["report", str(fair_run)]) == 0
    assert capsys.readouterr().out.strip() == str(report)
    page = html.unescape(report.read_text())
    assert json.loads((fair_run / "manifest.json").read_text())["run_id"] in page
    assert cli.main(["report", str(fair_run / "plots")]) == 2  # not a run directory: a clear error, no page
    assert "not a run directory" in capsys.readouterr().err
    assert not (fair_run / "plots" / REPORT).exists()


@pytest.mark.slow
def test_a_report_that_cannot_be_written_never_masks_the_runs_own_error(tmp_path, dask_engine, monkeypatch, caplog):
    def broken(run_dir):
        raise OSError(f"disk full writing {run_dir}")

    monkeypatch.setattr("pipelines.pipeline.build_report", broken)
    with caplog.at_level(logging.ERROR, logger="pipelines"), pytest.raises(ConfigError, match="no_such_column"):
        run_pipeline(_fair(tmp_path, "stages.1.features=[no_such_column]"), engine=dask_engine)
    assert "could not write the report" in caplog.text and "disk full" in caplog.text


@pytest.mark.slow
def test_first_layer_filters_are_plotted_only_for_networks_starting_with_a_conv(tmp_path):
    from pipelines.deep import plots
    from pipelines.deep.models import build, transfer

    lenet = build("lenet5", (8, 8), 10, {})
    kernel = plots.first_conv_kernel(lenet)
    assert kernel.shape == (5, 5, 1, 6)
    np.testing.assert_array_equal(kernel, lenet.layers[1].get_weights()[0])
    assert plots.first_conv_kernel(build("mlp", (8, 8), 10, {})) is None
    cnn = build("mnist_cnn", (8, 8), 5, {"filters": 4})
    assert plots.first_conv_kernel(transfer(cnn, 5)).shape == (3, 3, 1, 4)  # the base's first layer counts

    name = plots.filters(tmp_path / "filters.png", kernel)
    assert name == "filters.png" and (tmp_path / name).read_bytes().startswith(PNG)
