"""GAL Studio in a real Chromium: set up a run, review it by click and by key, undo, commit, see round 2, export.

Each step is checked where the truth lives: the SQLite database (opened with ``storage.open_db``) and
the run folder. Screenshots of the set-up, review and history pages go to ``artifacts/screenshots/``.
Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` package; skipped (with the reason) without them.
"""

from __future__ import annotations

import os
import socket
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): apt-get install -y chromium",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

import storage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gal_studio import app

    port = free_port()
    runs = tmp_path_factory.mktemp("runs")
    args = app.build_parser().parse_args(["--runs-dir", str(runs), "--model", "tiny", "--oracle", "tiny",
                                          "--port", str(port)])
    studio, demo, kwargs = app.create_app(args)
    demo.queue(default_concurrency_limit=1)
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    yield studio, demo, f"http://127.0.0.1:{port}/"
    demo.gal_handlers.worker.wait_idle(30)
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def fill(page, name: str, value) -> None:
    box = page.locator(f"#gal-f-{name} input, #gal-f-{name} textarea").first
    box.fill(str(value))
    box.blur()


def shot(page, name: str) -> None:
    """A full-page screenshot without the transient toasts."""
    page.evaluate("document.querySelectorAll('[data-testid=\"toast-body\"]').forEach(t => t.remove())")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def images(studio, run_id: str, r: int) -> list[dict]:
    with storage.open_db(studio.db_path) as db:
        return storage.list_images(db, run_id, r)


def person(studio, run_id: str, r: int) -> dict[int, int | None]:
    return {im["id"]: im["person_verdict"] for im in images(studio, run_id, r)}


def test_review_flow_in_a_real_browser(served, browser):
    studio, demo, url = served
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(30_000)

    # 1. set up: the demo button fills everything; shrink it to a tiny run
    page.goto(url)
    page.click("#gal-demo")
    page.wait_for_function("document.querySelectorAll('#gal-ref-preview img').length === 4")
    assert "a <sks> star on stairs" in page.inner_text("#gal-ref-table")
    fill(page, "anchors", "{} on grass\n{} in the sea\n{} in the snow\n{} at sunset")
    for name, value in {"m": 3, "k": 2, "train-steps": 10, "gen-steps": 3}.items():
        fill(page, name, value)
    fill(page, "k", 9)  # an invalid value is refused where it is typed, with the fix
    page.wait_for_function("document.querySelector('#gal-validation').innerText.includes('lower k')")
    fill(page, "k", 2)
    page.click("text=More settings")
    fill(page, "eval-per-prompt", 1)
    page.wait_for_function("document.querySelector('#gal-validation').innerText.includes('Ready')")
    shot(page, "setup")

    page.click("#gal-start")
    page.wait_for_selector("#gal-grid .gal-tile", timeout=120_000)
    run_id = wait_for(lambda: "run=" in page.url and page.url.split("run=")[1], what="?run= in the address")
    with storage.open_db(studio.db_path) as db:
        run = storage.get_run(db, run_id)
        assert run["status"] == "awaiting_review" and run["config"]["gal"]["m"] == 3
        assert len(storage.list_references(db, run_id)) == 4
    ims = images(studio, run_id, 1)
    assert len(ims) == 12 and page.locator("#gal-grid .gal-tile").count() == 12
    by_pos = sorted(ims, key=lambda im: (im["anchor_index"], im["slot"]))

    # 2. a click flips the first image's verdict, written to SQLite at once
    first = by_pos[0]
    page.click(f'#gal-grid .gal-tile[data-id="{first["id"]}"]')
    wait_for(lambda: person(studio, run_id, 1)[first["id"]] == 1 - first["oracle_verdict"], what="the click's row")
    page.wait_for_selector(f'#gal-grid .gal-tile[data-id="{first["id"]}"].override')

    # 3. keys: ↓ to anchor 1's first image, then a/x against the oracle, x on the next, u undoes it
    second = by_pos[3]
    page.keyboard.press("ArrowDown")
    page.keyboard.press("a" if second["oracle_verdict"] == 1 else "x")
    wait_for(lambda: person(studio, run_id, 1)[second["id"]] == 1 - second["oracle_verdict"], what="the key's row")
    third = by_pos[4]
    page.keyboard.press("x")
    wait_for(lambda: person(studio, run_id, 1)[third["id"]] == 1, what="x on the next image")
    # painted at once in the page ('pending'), then confirmed by the server's re-render from SQLite
    page.wait_for_selector(f'#gal-grid .gal-tile[data-id="{third["id"]}"].person:not(.pending)')
    page.wait_for_function("document.querySelector('#gal-counters [data-reviewed]')?.dataset.reviewed === '3'")
    page.keyboard.press("u")
    wait_for(lambda: person(studio, run_id, 1)[third["id"]] is None, what="undo")
    page.wait_for_function("document.querySelector('#gal-counters [data-reviewed]')?.dataset.reviewed === '2'")
    counters = page.inner_text("#gal-counters")
    assert "2/12" in counters and "Overrides 2" in counters.replace("\n", " ")
    with storage.open_db(studio.db_path) as db:
        history = storage.decision_history(db, third["id"])
    assert [d["verdict"] for d in history if d["source"] == "person"] == [1, None]  # append-only

    # the preview says what commit would add: 2 mixed anchors, k = 2
    page.wait_for_selector("#gal-preview [data-picks='2']")
    assert page.locator("#gal-grid .gal-tile.pick").count() == 2
    page.keyboard.press("?")
    page.wait_for_selector("#gal-help .gal-help", state="visible")
    page.keyboard.press("?")
    shot(page, "review")

    # 4. a refresh (and so a second tab) shows the same state, read from SQLite
    page.reload()
    page.wait_for_selector(f'#gal-grid .gal-tile[data-id="{first["id"]}"].override')
    assert page.locator("#gal-grid .gal-tile.person").count() == 2

    # 5. commit: the round's picks join the references and round 2 trains in the worker
    page.click("#gal-commit")
    page.wait_for_selector('#gal-grid .gal-grid[data-round="2"] .gal-tile', timeout=120_000)
    with storage.open_db(studio.db_path) as db:
        assert len(storage.list_selections(db, run_id, 1)) == 2
        synthetic = [x for x in storage.list_references(db, run_id) if x["source"] == "synthetic"]
        assert len(synthetic) == 2 and all((studio.run_dir(run_id) / x["file"]).is_file() for x in synthetic)
        assert storage.get_run(db, run_id)["current_round"] == 2
    assert "Round 2" in page.inner_text("#gal-counters")

    # 6. history: plots, the added references, the same anchor+seed across rounds
    page.click("#gal-tab-history-button, button[role='tab']:has-text('History')")
    page.wait_for_selector("#gal-compare table")
    page.wait_for_function("[...document.querySelectorAll('#gal-refs img')].length >= 6 && "
                           "[...document.querySelectorAll('#gal-refs img')].every(i => i.complete && i.naturalWidth > 0)")
    page.wait_for_selector("#gal-plot-txt .vega-embed")
    assert page.locator("#gal-compare th:has-text('round 2')").count() == 1
    shot(page, "history")

    # 7. export: files in <run>/export, a zip to download
    page.click("button[role='tab']:has-text('Export')")
    page.click("#gal-export")
    page.wait_for_selector("#gal-export-file a", timeout=60_000)
    out = studio.run_dir(run_id) / "export"
    assert (out / "README.md").is_file() and (out / "dataset" / "metadata.jsonl").is_file()
    archive = studio.run_dir(run_id) / f"{run_id}-export.zip"
    assert "README.md" in zipfile.ZipFile(archive).namelist()
    assert not errors, errors
