"""Browse the registry as a user would: headless Chromium (Debian's, driven by Selenium)
opens the MLflow page of a freshly registered model version and finds its alias and its
evaluation metrics. `deploy/install_browser.sh` installs the browser and driver."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import mlflow_registry as R

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        out = subprocess.run(["bash", str(REPO / "deploy" / "install_browser.sh")],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"deploy/install_browser.sh failed:\n{out.stdout}{out.stderr}"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps", "--window-size=1400,1000"):
        opts.add_argument(arg)
    # An explicit driver path: Selenium Manager (which would go online) is never invoked.
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_model_version_page_shows_alias_and_metrics(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    name = R.model_name("browser-test")
    reg = R.register_version(name, d, R.VersionInfo("browse-1", "base/model", "rev", "data"),
                             metrics={"lambada_ppl": 31.25, "passkey_8k": 1.0},
                             teacher_metrics={"lambada_ppl": 29.5})
    url = R.version_url(name, reg.version)
    browser.get(url)
    body = lambda drv: drv.find_element(By.TAG_NAME, "body").text
    try:
        WebDriverWait(browser, 60).until(
            lambda drv: "candidate" in body(drv) and "lambada_ppl" in body(drv))
    except Exception:
        browser.save_screenshot(str(tmp_path / "page.png"))
        raise AssertionError(f"{url} did not show alias and metric; page text:\n{body(browser)[:3000]}"
                             f"\n(screenshot: {tmp_path / 'page.png'})")
    text = body(browser)
    assert f"Version {reg.version}" in text
    assert "candidate" in text and "31.25" in text and "29.5" in text


def test_flow_registered_version_page_shows_aliases_and_evaluation(stack, browser, tiny_run, tmp_path):
    """The version the linearize flow registered (tests/service/conftest.py: tiny_run)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert tiny_run["flow_run"].state.is_completed()
    url = R.version_url("lolcats-tiny-cli", 1)
    browser.get(url)
    body = lambda drv: drv.find_element(By.TAG_NAME, "body").text
    try:
        WebDriverWait(browser, 60).until(lambda drv: "champion" in body(drv) and "perplexity" in body(drv))
    except Exception:
        browser.save_screenshot(str(tmp_path / "page.png"))
        raise AssertionError(f"{url} did not show aliases and metrics; page text:\n{body(browser)[:3000]}")
    text = body(browser)
    mv = R.version_by_alias("lolcats-tiny-cli", "candidate")
    ppl = float(mv.tags["metric.perplexity"])
    assert "candidate" in text and "Evaluation" in text and f"{ppl:.4g}" in text
