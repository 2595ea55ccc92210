"""The heaviest rotation test against a real moto_server process is the same code as under in-process moto,
at ~2x the cost per call: it runs with the slow suites."""

from __future__ import annotations

import pytest

SLOW_ON_MOTO_SERVER = ("test_rotate_rewrap_interrupted_twice_resume_then_retire",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.originalname in SLOW_ON_MOTO_SERVER and "[aws-server]" in item.nodeid:
            item.add_marker(pytest.mark.slow)
