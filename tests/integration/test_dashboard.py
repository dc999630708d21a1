"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright. A row written to the database
appears in the live tail; the figures are drawn; screenshots (laptop and phone) are saved as test artifacts."""

import os
import shutil
from pathlib import Path

import anyio
import pytest

import pgchanges

pytestmark = pytest.mark.anyio
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("PGCHANGES_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")


@pytest.fixture
def anyio_backend():
    return "asyncio"  # Playwright's async API runs on asyncio only; the dashboard does not care which loop serves


@pytest.fixture
def browser_path():
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.fail(f"the dashboard test needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium")
    return CHROMIUM


async def test_a_row_written_to_the_database_appears_in_the_live_tail(dsn, db, browser_path):
    from playwright.async_api import async_playwright, expect

    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text, total int)")
    app = pgchanges.App(dsn, source="logical", slot="dashboard", http="127.0.0.1:0", heartbeat=0.2)
    app.feed("public.orders", tokens={"dash-token": "operator"})
    app.ops.sampler.interval = 0.2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        base = f"http://127.0.0.1:{app.ops.port}"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                errors = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{base}/#token=dash-token")
                await expect(page.locator("#serving")).to_have_text("serving", timeout=15_000)
                await expect(page.locator("#tail-state")).to_have_text("following public.orders", timeout=15_000)
                db.execute("INSERT INTO orders VALUES (4242, 'browser-test', 99)")
                row = page.locator("#tail li", has_text="browser-test")
                await expect(row).to_have_count(1, timeout=15_000)
                await expect(row).to_contain_text("public.orders")
                await expect(page.locator("#slots tbody")).to_contain_text("dashboard", timeout=15_000)
                await expect(page.locator("#feed tbody")).to_contain_text("public.orders")
                await expect(page.locator("#clients")).to_have_text("1", timeout=15_000)  # the tail's own stream
                await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                phone = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
                await phone.goto(f"{base}/#token=dash-token")
                await expect(phone.locator("#tail li", has_text="browser-test")).to_have_count(0)  # from now on
                await expect(phone.locator("#tail-state")).to_have_text("following public.orders", timeout=15_000)
                overflow = await phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                await phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
            finally:
                await browser.close()
        app.stop()
    print(f"dashboard screenshots: {ARTIFACTS / 'dashboard.png'}, {ARTIFACTS / 'dashboard-phone.png'}")
    assert errors == []
    assert overflow <= 0  # nothing wider than a phone's screen: the page reflows
