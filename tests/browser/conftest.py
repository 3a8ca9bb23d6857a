"""Browser fixtures: Debian's Chromium driven by Playwright (never a downloaded browser),
against a real gunicorn with two gevent workers and the tests' own Redis."""

import os

import pytest
from playwright.sync_api import sync_playwright

from ..support import PROJECT

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = os.path.join(PROJECT, "artifacts")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def server(live, redis_server):
    return live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url)


@pytest.fixture
def open_page(browser):
    """``open_page(url, **context_options)``: a page in a context of its own."""
    contexts = []

    def open_page(url=None, **options):
        context = browser.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        if url:
            page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot():
    """Save a screenshot under artifacts/screenshots/."""
    folder = os.path.join(ARTIFACTS, "screenshots")
    os.makedirs(folder, exist_ok=True)

    def save(page, name):
        path = os.path.join(folder, f"{name}.png")
        page.screenshot(path=path, full_page=False)
        return path

    return save
