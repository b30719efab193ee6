"""The web page in a real Chromium (Debian's ``chromium`` and ``chromium-driver``, via selenium),
against ``rbee queen`` with its local hive and the default model.

One queen and one browser serve the module; the tests run in order (the playground's chat
starts the worker that the later tests use). Each test saves a screenshot of what it checked
into a temporary folder, or into ``$RBEE_SCREENSHOTS`` (``make screenshots``: docs/screenshots).
Without Chromium the module is skipped, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
import pytest

from rbee.models.importer import DEFAULT_MODEL
from tests.helpers import RBEE, RULES, eventually_sync
from tests.models.helpers import Synthetic, write_synthetic_gguf
from tests.test_main_job import environment, link_default_model, read_line

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 60.0
PAGES = ("overview", "playground", "policy", "jobs", "models", "logs")
# A draft with a syntax error on line 3 (a call left open).
BROKEN = """fn schedule_job(job, workers) {
    let free = workers.with_model(job.model).available();
    let best = free.least_loaded(;
    return best;
}
"""
CLOSED = 'fn schedule_job(job, workers) {\n    return reject("closed for maintenance");\n}\n'
PIN = """fn schedule_job(job, workers) {{
    let chosen = workers.filter(|w| w.id == "{worker}");
    if chosen.is_empty() {{
        return reject("no worker {worker}");
    }}
    return chosen.first();
}}
"""


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: apt-get install chromium chromium-driver (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; the dev extra has it)"
    return None


_why = _missing()
if _why is not None and os.environ.get("CI"):
    raise RuntimeError(f"the browser tests must run in CI: {_why}")
if _why is not None:
    pytest.skip(_why, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver import Chrome as WebDriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@dataclass
class Queen:
    url: str
    stderr: Path

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=10).json()


@contextlib.contextmanager
def running_queen(root: Path, model_store: Path) -> Iterator[Queen]:
    """``rbee queen`` with a local hive and the default model; leaves no process behind."""
    store = root / "queen-models"
    link_default_model(store, model_store)
    stderr = root / "queen.err"
    argv = [*RBEE, "queen", "--port", "0", "--db", str(root / "q.db"), "--models-dir", str(store)]
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, text=True, env=environment(root)
        )
    try:
        first = read_line(proc, 30)
        assert first.startswith("rbee queen listening on http://"), first
        assert read_line(proc, 30) == "rbee queen ready"
        queen = Queen(first.rsplit(" ", 1)[1], stderr)
        eventually_sync(lambda: bool(queen.get("/v1/hives")["hives"]), 30, "the local hive")
        yield queen
    finally:
        family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
        _, alive = psutil.wait_procs(family, timeout=30)
        for leftover in alive:
            leftover.kill()
        assert not alive, f"left behind: {alive}"


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Queen]:
    with running_queen(tmp_path_factory.mktemp("ui-queen"), model_store) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox does not start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("RBEE_SCREENSHOTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def console_errors(driver: WebDriver) -> list[str]:
    """The browser console's errors since the last call."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [e["message"] for e in entries if e["level"] == "SEVERE"]


def wait_for(driver: WebDriver, css: str, text: str | None = None) -> WebElement:
    """The element at ``css`` once it is there (holding ``text``, if given)."""

    def found(d: WebDriver) -> WebElement | bool:
        elements = d.find_elements(By.CSS_SELECTOR, css)
        if not elements:
            return False
        return elements[0] if text is None or text in elements[0].text else False

    return cast(WebElement, WebDriverWait(driver, WAIT_S).until(found))


def open_page(driver: WebDriver, queen: Queen, page: str) -> None:
    driver.get(f"{queen.url}/ui#/{page}")
    wait_for(driver, f'nav a[href="#/{page}"][aria-current="page"]')


def set_draft(driver: WebDriver, source: str) -> None:
    """Replace the editor's text and type one more key, as a user would."""
    editor = wait_for(driver, "#policy-source")
    driver.execute_script("arguments[0].value = arguments[1];", editor, source.rstrip("\n"))
    editor.send_keys(Keys.END, "\n")


def chat(driver: WebDriver, prompt: str) -> tuple[list[str], str]:
    """Send ``prompt`` from the playground; every text the answer showed, and the worker."""
    box = wait_for(driver, "#pg-prompt")
    driver.find_element(By.ID, "pg-max-tokens").clear()
    driver.find_element(By.ID, "pg-max-tokens").send_keys("32")
    driver.find_element(By.ID, "pg-temperature").clear()
    driver.find_element(By.ID, "pg-temperature").send_keys("0")
    # Record each text the answer shows as the stream arrives (a MutationObserver sees every
    # change, however fast they come).
    driver.execute_script(
        """
        window.seen = [];
        new MutationObserver((records) => {
          for (const r of records) {
            if (r.target.id !== 'pg-answer') continue;
            for (const n of r.addedNodes) if (n.nodeType === Node.TEXT_NODE) window.seen.push(n.data);
          }
        }).observe(document.getElementById('pg-log'), {childList: true, subtree: true});
        """
    )
    box.send_keys(prompt, Keys.CONTROL, Keys.ENTER)
    wait_for(driver, '.msg.assistant[data-done="true"]')
    worker = wait_for(driver, "#pg-worker").text
    seen: list[str] = driver.execute_script("return window.seen;")
    return seen, worker


def test_every_page_loads_without_a_console_error(
    browser: WebDriver, queen: Queen, shots: Path
) -> None:
    ready = {
        "overview": ("p.summary", "policy first-available"),
        "playground": ("#pg-prompt", None),
        "policy": ("#policy-ok", "ok"),
        "jobs": ("#jobs p, #jobs table", None),
        "models": ("section.card", DEFAULT_MODEL),
        "logs": ("#log-status", None),
    }
    for page in PAGES:
        open_page(browser, queen, page)
        css, text = ready[page]
        wait_for(browser, css, text)
        browser.save_screenshot(str(shots / f"{page}.png"))
        assert console_errors(browser) == [], page
    # The whole page can be walked by keyboard: Tab reaches every page's link.
    browser.get(f"{queen.url}/ui#/overview")
    wait_for(browser, "p.summary")
    reached = set()
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(12):
        focused = browser.switch_to.active_element
        reached.add(focused.get_attribute("href") or "")
        focused.send_keys(Keys.TAB)
    assert {f"{queen.url}/ui#/{page}" for page in PAGES} <= reached


def test_a_playground_chat_streams_its_answer_and_names_its_worker(
    browser: WebDriver, queen: Queen, shots: Path
) -> None:
    open_page(browser, queen, "playground")
    seen, worker = chat(browser, "What is the capital of France?")
    answer = browser.find_element(By.ID, "pg-answer").text
    assert answer
    # The text grew piece by piece: each shown text is a prefix of the next.
    assert len(seen) > 3, seen
    assert all(b.startswith(a) for a, b in itertools.pairwise(seen)), seen
    assert seen[-1] == answer
    workers = [e["worker"]["id"] for e in queen.get("/v1/workers")["workers"]]
    assert worker in workers
    reasons = browser.find_elements(By.CSS_SELECTOR, "#pg-info ol.reasons li")
    assert reasons
    browser.save_screenshot(str(shots / "playground.png"))
    assert console_errors(browser) == []


def test_a_syntax_error_is_shown_on_its_line(browser: WebDriver, queen: Queen, shots: Path) -> None:
    open_page(browser, queen, "policy")
    wait_for(browser, "#policy-ok")
    set_draft(browser, BROKEN)
    error = wait_for(browser, "#policy-error")
    assert error.text.startswith("3:"), error.text
    marked = browser.find_elements(By.CSS_SELECTOR, "#policy-gutter div.err")
    assert [m.get_attribute("data-line") for m in marked] == ["3"]
    assert browser.find_element(By.ID, "policy-source").get_attribute("aria-invalid") == "true"
    browser.save_screenshot(str(shots / "policy-error.png"))
    # Mending it clears the mark.
    set_draft(browser, BROKEN.replace("least_loaded(;", "least_loaded();"))
    wait_for(browser, "#policy-ok")
    assert browser.find_elements(By.CSS_SELECTOR, "#policy-gutter div.err") == []
    assert console_errors(browser) == []


def test_yaml_rules_are_edited_and_checked_as_yaml(
    browser: WebDriver, queen: Queen, shots: Path
) -> None:
    if importlib.util.find_spec("rbee.policy.rules") is None:
        pytest.skip("this tree has no YAML rules compiler")
    open_page(browser, queen, "policy")
    wait_for(browser, "#policy-ok")
    Select(browser.find_element(By.ID, "policy-format")).select_by_value("yaml")
    set_draft(browser, RULES)
    wait_for(browser, "#policy-ok")
    set_draft(browser, RULES.replace("priority: batch", "priorty: batch"))
    error = wait_for(browser, "#policy-error")
    assert error.text.startswith("4:"), error.text
    assert "priorty" in error.text
    marked = browser.find_elements(By.CSS_SELECTOR, "#policy-gutter div.err")
    assert [m.get_attribute("data-line") for m in marked] == ["4"]
    browser.save_screenshot(str(shots / "policy-yaml.png"))
    # Back to the policy language for the tests after this one.
    Select(browser.find_element(By.ID, "policy-format")).select_by_value("rhai")
    set_draft(browser, CLOSED)
    wait_for(browser, "#policy-ok")
    assert console_errors(browser) == []


def test_a_preview_shows_a_changed_decision(browser: WebDriver, queen: Queen, shots: Path) -> None:
    open_page(browser, queen, "policy")
    set_draft(browser, CLOSED)
    wait_for(browser, "#policy-ok")
    browser.find_element(By.ID, "policy-preview").click()
    summary = wait_for(browser, "#preview-summary")
    assert "2 decisions change" in summary.text, summary.text
    changed = browser.find_elements(By.CSS_SELECTOR, '#preview-out tr[data-changed="true"]')
    assert len(changed) == 2
    assert "route" in changed[0].text
    assert "reject: closed for maintenance" in changed[0].text
    browser.find_element(By.ID, "policy-replay").click()
    replay = wait_for(browser, "#replay-summary")
    # Every logged decision routed or spawned; the draft rejects them all.
    logged = len(queen.get("/v1/decisions?last=100")["decisions"])
    assert logged >= 1
    assert f"{logged} decisions replayed: 0 the same, {logged} different" in replay.text
    browser.save_screenshot(str(shots / "policy-preview.png"))
    assert console_errors(browser) == []


def test_applying_a_policy_changes_where_the_next_job_goes(
    browser: WebDriver, queen: Queen, shots: Path
) -> None:
    (first,) = [e["worker"]["id"] for e in queen.get("/v1/workers")["workers"]]
    spawned = httpx.post(
        f"{queen.url}/v1/workers",
        json={"hive": "local", "model": DEFAULT_MODEL, "wait": True},
        timeout=120,
    )
    assert spawned.status_code == 201, spawned.text
    second = spawned.json()["id"]
    open_page(browser, queen, "playground")
    _, before = chat(browser, "Say hello.")
    target = second if before == first else first
    open_page(browser, queen, "policy")
    set_draft(browser, PIN.format(worker=target))
    wait_for(browser, "#policy-ok")
    browser.find_element(By.ID, "policy-apply").click()
    wait_for(browser, "#apply-result", "applied")
    assert "applied-policy.rhai" in browser.find_element(By.ID, "policy-running").text
    open_page(browser, queen, "playground")
    _, after = chat(browser, "Say hello again.")
    assert after == target
    assert target != before
    browser.save_screenshot(str(shots / "playground-applied.png"))
    # The job's trace shows the decision of the applied policy, with its reasons.
    job_link = browser.find_element(By.CSS_SELECTOR, "#pg-info a")
    job_link.send_keys(Keys.ENTER)
    decision = wait_for(browser, "#job-decision", "applied-policy.rhai")
    assert f"route {target}" in decision.text
    browser.save_screenshot(str(shots / "job.png"))
    assert console_errors(browser) == []


def test_the_overview_and_the_logs_show_the_running_workers(
    browser: WebDriver, queen: Queen, shots: Path
) -> None:
    workers = sorted(e["worker"]["id"] for e in queen.get("/v1/workers")["workers"])
    assert len(workers) == 2
    open_page(browser, queen, "overview")
    rows = wait_for(browser, "#overview tbody")
    WebDriverWait(browser, WAIT_S).until(
        lambda _: len(rows.find_elements(By.CSS_SELECTOR, "tr[data-worker]")) == 2
    )
    shown = [r.get_attribute("data-worker") for r in rows.find_elements(By.TAG_NAME, "tr")]
    assert shown == workers
    local = wait_for(browser, 'section[data-hive="local"]')
    assert "RAM" in local.text
    assert DEFAULT_MODEL in local.text
    browser.save_screenshot(str(shots / "overview.png"))

    open_page(browser, queen, "logs")
    log = wait_for(browser, "#log-text")
    WebDriverWait(browser, WAIT_S).until(lambda _: log.text.strip() != "")
    assert "worker" in wait_for(browser, "#log-status").text
    browser.save_screenshot(str(shots / "logs.png"))

    open_page(browser, queen, "jobs")
    jobs = wait_for(browser, "#jobs table")
    # The three chats of the tests before.
    assert len(jobs.find_elements(By.CSS_SELECTOR, "tbody tr")) == 3
    browser.save_screenshot(str(shots / "jobs.png"))
    assert console_errors(browser) == []


def test_the_models_page_imports_a_gguf_on_a_hive_with_progress(
    browser: WebDriver, queen: Queen, shots: Path, tmp_path: Path
) -> None:
    open_page(browser, queen, "models")
    local = wait_for(browser, 'section[aria-label="hive local"]', DEFAULT_MODEL)
    assert "tiny-import" not in local.text
    tiny = write_synthetic_gguf(
        tmp_path / "tiny.gguf", Synthetic("llama", layers=1, hidden=64, ffn=128, head_dim=16)
    )
    browser.find_element(By.ID, "import-path").send_keys(str(tiny))
    browser.find_element(By.ID, "import-name").send_keys("tiny-import", Keys.ENTER)
    wait_for(browser, 'progress[aria-label="pull progress"]')
    # The page lists the hive's models again once the import ends (or shows why it failed).
    WebDriverWait(browser, WAIT_S).until(
        lambda d: (
            "tiny-import" in d.find_element(By.ID, "models").text
            or d.find_elements(By.CSS_SELECTOR, "#import-out .error")
        )
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#import-out .error") == [], browser.find_element(
        By.ID, "import-out"
    ).text
    models = queen.get("/v1/hives/local/models")["models"]
    assert "tiny-import" in [m["name"] for m in models]
    browser.save_screenshot(str(shots / "models.png"))
    assert console_errors(browser) == []
