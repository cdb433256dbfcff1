"""Fixtures the fleet page's browser tests share: one headless Chromium per test."""

import pytest

from cdp import Browser


@pytest.fixture
def browser():
    browser = Browser()
    yield browser
    browser.close()
