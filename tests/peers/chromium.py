"""A real headless Chromium for the softphone tests, driven by Selenium and the system chromedriver.

Debian's `chromium` + `chromium-driver` (`make system-deps`); nothing is downloaded. The fake
microphone plays a WAV file (looped from the start of each capture), and autoplay is allowed.
Selenium is synchronous: `BrowserPage` runs each call on a thread so the agent under test keeps
running on the test's event loop.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CHROMEDRIVER", "CHROMIUM", "BrowserPage", "missing", "start_chromium"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1000,1100",
]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(Path(path).name) is None and not Path(path).exists():
            return f"Chromium is not installed ({package} missing: `make system-deps` installs it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def start_chromium(profile: Path, microphone_wav: Path) -> Any:
    """A headless Chromium whose microphone plays `microphone_wav`; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--use-file-for-fake-audio-capture={microphone_wav}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    service = Service(shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(20)
    driver.set_page_load_timeout(20)
    return driver


class BrowserPage:
    """Async helpers over one Selenium driver: every call runs on a worker thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, url: str) -> dict[str, Any]:
        await self._run(self.driver.get, url)
        return await self.wait(lambda s: True, 10, "the softphone page to load")

    async def js(self, script: str, *args: Any) -> Any:
        return await self._run(self.driver.execute_script, script, *args)

    async def js_async(self, script: str, *args: Any) -> Any:
        return await self._run(self.driver.execute_async_script, script, *args)

    async def snapshot(self) -> Any:
        return await self.js("return window.softphone ? window.softphone.snapshot() : null")

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        element = await self._run(self.driver.find_element, By.CSS_SELECTOR, css)
        await self._run(element.click)

    async def type(self, css: str, text: str) -> None:
        from selenium.webdriver.common.by import By

        element = await self._run(self.driver.find_element, By.CSS_SELECTOR, css)
        await self._run(element.clear)
        await self._run(element.send_keys, text)

    async def visible(self, css: str) -> bool:
        from selenium.webdriver.common.by import By

        element = await self._run(self.driver.find_element, By.CSS_SELECTOR, css)
        return bool(await self._run(element.is_displayed))

    async def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(self.driver.save_screenshot, str(path))
        return path

    async def wait(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """Poll the page's snapshot until `predicate` holds; fail with the last snapshot."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        snap = None
        while True:
            snap = await self.snapshot()
            if snap is not None and predicate(snap):
                return snap
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; page: {snap!r}"[:4000])
            await asyncio.sleep(0.1)

    async def console(self) -> list[dict[str, Any]]:
        return list(await self._run(self.driver.get_log, "browser"))
