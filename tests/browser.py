"""A real headless browser for the report page: Debian's Chromium driven by Playwright.

`make test`'s set-up installs Chromium from the system's packages (never `playwright install`).
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def open_page(page_file: Path, screenshot: Path, width: int = 390) -> dict:
    """Load ``page_file`` at a phone's width; write a full-page screenshot.

    Returns:
        ``errors`` (console errors and uncaught page errors), ``images`` (each ``<img>``'s
        natural width and height) and ``overflow`` (how far the page is wider than the screen).
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 844})
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "images": images, "overflow": overflow}
