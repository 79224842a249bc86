"""The feature browser: the stage's files and summary, then the pages driven in headless Chromium
(search, sort, a feature page's shaded tokens) and corpus text that tries to inject markup."""

import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from monosem_jax.analysis import interpret as interp
from monosem_jax.browser import write
from monosem_jax.configs.browse import default as browse_default
from monosem_jax.configs.sae import default as sae_default

# Without the background-networking flags Chromium keeps trying to reach Google's services.
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync "
    "--window-size=1200,1600"
).split()
PAYLOADS = (
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    '"><svg onload=alert(3)>',
    "</script><script>alert(4)</script>",
)


@pytest.fixture(scope="module")
def site(sae_workdir, tmp_path_factory):
    """A copy of the session's smoke work directory (captured store, smoke SAE) with its browser."""
    workdir = str(tmp_path_factory.mktemp("browse") / "w")
    shutil.copytree(sae_workdir, workdir)
    summary = write.browse(browse_default.get_config("smoke"), workdir)
    return workdir, summary


def _index(out_dir):
    with open(os.path.join(out_dir, "features_index.js")) as f:
        text = f.read()
    prefix = "window.MONOSEM_INDEX = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix) :].rstrip().rstrip(";"))


def test_browse_writes_summary_and_lazy_pages(site):
    workdir, summary = site
    out_dir = os.path.join(workdir, "browser")
    assert summary["features_written"] == 128 and summary["pages"] == 129
    assert summary["sae_name"] == sae_default.get_config("smoke").variant
    assert summary["logit_effects"]
    assert 0 < summary["alive_features"] <= 128 and summary["wall_s"] > 0
    with open(os.path.join(out_dir, "summary.json")) as f:
        assert json.load(f) == summary
    assert len(os.listdir(os.path.join(out_dir, "data"))) == 128
    assert write.read_index(out_dir) == _index(out_dir)  # the reader the report uses
    assert write.read_index(os.path.join(workdir, "nowhere")) is None
    index = _index(out_dir)
    assert len(index["rows"]) == 128 and index["columns"] == list(write.INDEX_COLUMNS)
    assert index["labelled"]  # the generated corpus has concept labels
    for name in os.listdir(os.path.join(out_dir, "data")):
        with open(os.path.join(out_dir, "data", name)) as f:
            assert "<" not in f.read()  # corpus text can never close a tag
    # A rerun with the same config is a no-op; another config rewrites the site.
    stamp = os.stat(os.path.join(out_dir, "data", "0.js")).st_mtime_ns
    assert write.browse(browse_default.get_config("smoke"), workdir) == summary
    assert os.stat(os.path.join(out_dir, "data", "0.js")).st_mtime_ns == stamp
    other = workdir + "_other"
    shutil.copytree(workdir, other)
    config = browse_default.get_config("smoke")
    config.max_features = 7
    assert write.browse(config, other)["features_written"] == 7
    assert sorted(os.listdir(os.path.join(other, "browser", "data"))) == [
        f"{i}.js" for i in range(7)
    ]


def test_bad_config_and_missing_run_are_clear_errors(smoke_lm_workdir):
    config = browse_default.get_config("smoke")
    config.top_n = 0
    with pytest.raises(ValueError, match="top_n"):
        write.browse(config, smoke_lm_workdir)
    config = browse_default.get_config("smoke")
    config.sae_name = "nope"
    with pytest.raises(FileNotFoundError, match="no SAE run 'nope'"):
        write.browse(config, smoke_lm_workdir)


@pytest.fixture(scope="module")
def driver():
    """Headless Chromium through chromedriver, alert() recorded in window.__alerts."""
    binary = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    chromedriver = shutil.which("chromedriver")
    if not binary or not chromedriver:
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.unhandled_prompt_behavior = "ignore"  # a dialog stays open for switch_to.alert
    chrome = webdriver.Chrome(options=options, service=Service(chromedriver))
    chrome.set_page_load_timeout(30)
    # Also count alerts in page state, in case a dialog was opened and closed.
    chrome.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": "window.__alerts = 0; window.alert = () => { window.__alerts += 1; };"},
    )
    yield chrome
    chrome.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _url(path):
    return "file://" + os.path.abspath(path)


def _wait(driver, fn, timeout=15):
    return WebDriverWait(driver, timeout).until(lambda d: fn(d))


def _shown_ids(driver):
    """Feature ids of the table's rows, in order (one round trip, not one per row)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#features tbody tr td:first-child a')]"
        ".map((a) => Number(a.textContent));"
    )


def _type(driver, text):
    box = driver.find_element(By.ID, "search")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)


def _sorted_ids(rows, column, descending):
    col = write.INDEX_COLUMNS.index(column)
    present = [r for r in rows if r[col] is not None]
    key = (lambda r: (-r[col], r[0])) if descending else (lambda r: (r[col], r[0]))
    return [r[0] for r in sorted(present, key=key)] + [r[0] for r in rows if r[col] is None]


def test_index_search_sort_and_feature_page(site, driver):
    workdir, _ = site
    out_dir = os.path.join(workdir, "browser")
    rows = _index(out_dir)["rows"]
    search_col = write.INDEX_COLUMNS.index("search")
    driver.get(_url(os.path.join(out_dir, "index.html")))
    assert driver.title == "SAE features"
    assert sorted(_shown_ids(driver)) == list(range(128))
    assert _shown_ids(driver) == _sorted_ids(rows, "density", True)  # the default order

    # Search: a word in some rows' labels/top tokens but not all.
    words = [w for r in rows for w in set(r[search_col].split()) if w.isalpha()]
    counts = {w: sum(w in r[search_col] for r in rows) for w in set(words)}
    term = max((w for w, n in counts.items() if n < len(rows) // 2), key=counts.get)
    _type(driver, term.upper())  # the search ignores case
    want = {r[0] for r in rows if term in r[search_col]}
    _wait(driver, lambda d: set(_shown_ids(d)) == want)
    assert driver.find_element(By.ID, "count").text.startswith(f"{len(want)} of 128")

    # Sorting by max activation (descending, then ascending) and by concept F1.
    _type(driver, "")
    _wait(driver, lambda d: len(_shown_ids(d)) == 128)
    header = driver.find_element(By.CSS_SELECTOR, "th[data-key='max_act']")
    header.click()
    assert _shown_ids(driver) == _sorted_ids(rows, "max_act", True)
    header.click()
    assert _shown_ids(driver) == _sorted_ids(rows, "max_act", False)
    driver.find_element(By.CSS_SELECTOR, "th[data-key='f1']").click()
    assert _shown_ids(driver) == _sorted_ids(rows, "f1", True)

    # The feature with the highest max activation: its page shades tokens by activation.
    driver.find_element(By.CSS_SELECTOR, "th[data-key='max_act']").click()
    top_id = _shown_ids(driver)[0]
    driver.find_element(By.CSS_SELECTOR, "#features tbody tr td:first-child a").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#top span.tok"))
    assert driver.find_element(By.ID, "heading").text == f"Feature {top_id}"
    spans = driver.find_elements(By.CSS_SELECTOR, "#top span.tok")
    shaded = [s for s in spans if s.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"]
    assert shaded and all(s.get_attribute("style").startswith("background-color") for s in shaded)
    examples = driver.find_elements(By.CSS_SELECTOR, "#top .example")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#top span.tok.focus")) == len(examples)
    assert 0 < len(examples) <= 5  # smoke top_n
    assert driver.find_elements(By.CSS_SELECTOR, "#hist svg rect")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#up li")) == 10
    assert len(driver.find_elements(By.CSS_SELECTOR, "#down li")) == 10
    assert "density" in driver.find_element(By.ID, "stats").text
    # Navigating to the next feature loads its data lazily, without a reload.
    driver.find_element(By.ID, "next").click()
    _wait(driver, lambda d: d.find_element(By.ID, "heading").text == f"Feature {top_id + 1}")


def _hostile_site(out_dir):
    """A one-feature site whose tokens, labels and concept names are markup payloads."""
    vocab = ["a", " b"] + list(PAYLOADS)
    payload_ids = np.arange(2, len(vocab))
    windows_WL = np.tile(np.arange(len(vocab)), 8).reshape(4, 12)
    acts_WLF = np.isin(windows_WL, payload_ids)[..., None] * np.float32(2.0)
    labels_WL = np.ones_like(windows_WL, np.uint32)
    cfg = interp.InterpretConfig(top_n=4, context_before=3, context_after=2, sample_size=4)
    stats = interp.stream_features([(0, acts_WLF, labels_WL)], cfg, 1, 1, windows_WL.shape[1])
    rng = np.random.default_rng(0)
    effects = interp.logit_effects(rng.normal(size=(1, 4)), rng.normal(size=(4, 6)), None, top=6)
    records = [write.feature_record(0, stats, effects, windows_WL, cfg, vocab, [PAYLOADS[3]], 1.1)]
    write.write_site(
        out_dir, {"sae": PAYLOADS[1], "hook": "h", "tokens": 1, "labelled": True}, records, vocab
    )
    return records[0][0]


def _assert_no_alert(driver):
    time.sleep(0.3)  # let any injected onerror/onload handler run
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text
    assert driver.execute_script("return window.__alerts") == 0
    assert driver.execute_script("return document.querySelectorAll('img').length") == 0


def test_corpus_markup_shows_as_text_and_never_runs(driver, tmp_path):
    record = _hostile_site(str(tmp_path))
    assert PAYLOADS[0] in record["label"]  # the fallback label is made of its top tokens

    driver.get(_url(tmp_path / "index.html"))
    _wait(driver, lambda d: _shown_ids(d) == [0])
    _assert_no_alert(driver)
    assert driver.title == "SAE features"
    label_cell = driver.find_element(By.CSS_SELECTOR, "#features tbody td.label-cell")
    assert PAYLOADS[0] in label_cell.text
    assert PAYLOADS[1] in driver.find_element(By.ID, "meta").text
    assert len(driver.find_elements(By.TAG_NAME, "script")) == 2  # only the page's own
    _type(driver, "<script>")
    _wait(driver, lambda d: _shown_ids(d) == [0])

    driver.get(_url(tmp_path / "feature.html") + "#0")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#top span.tok"))
    _assert_no_alert(driver)
    assert driver.title.startswith("Feature 0 · ") and PAYLOADS[0] in driver.title
    text = driver.find_element(By.TAG_NAME, "body").text
    for payload in PAYLOADS:
        assert payload in text
    assert len(driver.find_elements(By.TAG_NAME, "svg")) == 1  # the histogram only
    assert len(driver.find_elements(By.TAG_NAME, "script")) == 3  # vocab, page, feature data
    token_texts = {s.text for s in driver.find_elements(By.CSS_SELECTOR, "#top span.tok")}
    assert set(PAYLOADS) <= token_texts

    # The check above does catch markup that runs: inject some the unsafe way.
    driver.execute_script("document.body.innerHTML += arguments[0]", PAYLOADS[1])
    _wait(driver, lambda d: d.execute_script("return window.__alerts") > 0)


def test_report_examples_come_from_the_index_without_concepts(site):
    """On real text (no concept table) the report's examples are the densest live features."""
    from monosem_jax import report

    workdir, _ = site
    out_dir = os.path.join(workdir, "browser")
    chosen = report.example_features({"concept_table": None}, out_dir, count=3)
    index = _index(out_dir)
    column = {name: i for i, name in enumerate(index["columns"])}
    live = [r for r in index["rows"]
            if write.read_feature_record(out_dir, r[column["id"]]).get("top")]
    densest = sorted(live, key=lambda r: -r[column["density"]])[:3]
    assert [c["id"] for c in chosen] == [r[column["id"]] for r in densest]
