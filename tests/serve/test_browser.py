"""The page as a person uses it, in headless Chromium: open the one-time login link, ask, mark wrong, hint, accept,
train, see the new adapter.

Needs Playwright (``pip install -e '.[serve]'``) and Debian's Chromium at /usr/bin/chromium (``apt-get install
chromium``; Playwright's own browser download is not used). Screenshots go to ``$FEDSPEAR_ARTIFACTS`` (default
``runs/test-artifacts/``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_fixtures import REPO, ServeProcess, run_train_local, tiny_world_dir

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return tiny_world_dir(tmp_path_factory)


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no system Chromium (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _artifacts() -> Path:
    out = Path(os.environ.get("FEDSPEAR_ARTIFACTS", REPO / "runs" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_teach_through_the_page_then_a_local_round_answers(browser, tiny_world, tmp_path):
    state = tmp_path / "client"
    problems: list[str] = []
    with ServeProcess(state, tiny_world, "--token-delay-ms", "150") as server:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        # not logged in, the page loads (it holds no data) and says how to get in; the API refuses (401)
        page.goto(server.url)
        locked = page.get_by_test_id("locked")
        locked.wait_for()
        assert "?login=" in locked.inner_text() and not page.get_by_test_id("question").is_visible()
        page.screenshot(path=str(_artifacts() / "serve-page-locked.png"), full_page=True)

        # the link `fedspear serve` printed: the server sets an HttpOnly, SameSite=Strict cookie and redirects to
        # the clean URL; the page's script and storage never hold the secret
        page.goto(server.link)
        problems.clear()  # the locked page's refused (401) calls were logged as console errors
        page.get_by_test_id("adapter-version").filter(has_text="v0 (initial)").wait_for()
        assert page.url == server.url + "/" and page.get_by_test_id("locked").is_hidden()
        [cookie] = page.context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
            f"fedspear_session_{server.port}", True, "Strict", "/")
        assert page.evaluate("document.cookie") == "" and page.evaluate("localStorage.length") == 0
        page.goto(server.url)  # a later visit without the link still works
        page.get_by_test_id("adapter-version").filter(has_text="v0 (initial)").wait_for()
        # the link is used up: another browser that opens it is not logged in and is told why
        other = browser.new_page()
        assert other.goto(server.link).status == 403 and "used already" in other.inner_text("body")
        assert other.context.cookies() == []
        other.close()

        # a question that leaves no room for a revision is refused when asked, and the page says so
        page.get_by_test_id("question").fill("zorvik " * 150)
        page.get_by_test_id("ask").click()
        page.get_by_test_id("error").filter(has_text="too long to be revised").wait_for()
        assert problems == ["console: Failed to load resource: the server responded with a status of 422 "
                            "(Unprocessable Entity)"]  # the refused question, and nothing else
        problems.clear()

        # ask: the answer streams in (visible while still generating), then the verdict buttons appear
        page.get_by_test_id("question").fill("What color is the zorvik?")
        page.get_by_test_id("ask").click()
        page.wait_for_function("() => { const a = document.querySelector('[data-testid=answer-0]');"
                               " return a && a.classList.contains('streaming') && a.textContent.length > 0; }")
        page.get_by_test_id("verdict-wrong").click()

        # the hint box warns not to give the answer away
        notice = page.get_by_test_id("hint-notice")
        notice.wait_for()
        assert "not the answer" in notice.inner_text()
        assert "2 of 2 revision(s) left" in page.get_by_test_id("revisions-left").inner_text()
        page.get_by_test_id("hint").fill("think of grass")
        page.get_by_test_id("revise").click()
        page.get_by_test_id("accept").click()
        outcome = page.get_by_test_id("outcome")
        outcome.filter(has_text="Revision accepted").wait_for()
        assert "answered by adapter v0 (initial)" in page.get_by_test_id("meta-1").inner_text()
        assert "Your hint: think of grass" in page.get_by_test_id("attempt-1").inner_text()
        page.screenshot(path=str(_artifacts() / "serve-page-taught.png"), full_page=True)

        # a local training round from the page's feedback; the running app picks up the new adapter
        summary = run_train_local(state, tiny_world)
        assert summary["published"]["version"] == 1
        page.get_by_test_id("new-question").click()
        page.get_by_test_id("question").fill("What color is the zorvik?")
        page.get_by_test_id("ask").click()
        page.get_by_test_id("verdict-right").wait_for()
        assert "answered by adapter v1 (local round 1)" in page.get_by_test_id("meta-0").inner_text()
        page.get_by_test_id("adapter-version").filter(has_text="v1 (local round 1)").wait_for(timeout=10_000)
        page.get_by_test_id("verdict-right").click()
        outcome.filter(has_text="Marked right").wait_for()
        assert page.get_by_test_id("history").locator("li").count() == 2
        page.screenshot(path=str(_artifacts() / "serve-page.png"), full_page=True)
    assert problems == []
