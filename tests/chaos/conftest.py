"""Fixtures for the chaos tests: ``private_mariadb`` (a MariaDB server of the
test's own that it may stop, kill and restart, never the shared one on 3306)
and ``chaos_report``, where each scenario says which faults it injected and
what it checked; the lines are printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos.private_mariadb import private_mariadb  # noqa: F401

_REPORT: list[str] = []


@pytest.fixture
def chaos_report(request) -> Callable[[str], None]:
    def say(line: str) -> None:
        _REPORT.append(f"{request.node.name}: {line}")

    return say


def pytest_terminal_summary(terminalreporter) -> None:
    if _REPORT:
        terminalreporter.section("chaos: faults injected and what was checked")
        for line in _REPORT:
            terminalreporter.write_line(line)
