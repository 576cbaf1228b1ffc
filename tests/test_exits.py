"""The exit statuses are a table in the code (ecloud/cli/exits.py); the
README's table is generated from it and must not drift."""

from __future__ import annotations

import re
from pathlib import Path

from ecloud.cli import exits

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_shows_the_exit_status_table_of_the_code() -> None:
    text = README.read_text()
    block = re.search(r"<!-- exit-statuses:[^\n]*-->\n(.*?)\n<!-- /exit-statuses -->", text, re.S)
    assert block, "README.md lacks the generated exit-status table"
    assert block.group(1) == exits.markdown(), (
        "README.md's exit-status table differs from ecloud/cli/exits.py: paste exits.markdown()")


def test_every_named_status_is_in_the_table() -> None:
    named = {v for k, v in vars(exits).items() if k.isupper() and isinstance(v, int)}
    assert named == {row.status for row in exits.TABLE if isinstance(row.status, int)}


def test_the_errors_exit_with_the_statuses_of_the_table() -> None:
    """errors.py cannot import the CLI's table (the pure side would then
    reach the CLI): its numbers are checked against it here."""
    from ecloud.cli import exits
    from ecloud.errors import FencedError, LogHeldError, UserError

    assert (UserError.exit_status, FencedError.exit_status, LogHeldError.exit_status) == (
        exits.USAGE, exits.FENCED, exits.LOG_HELD)
