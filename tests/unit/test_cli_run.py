"""`dsguard guard` refuses settings that would hammer the apiserver, before connecting anywhere."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dsguard.cli import main


@pytest.mark.parametrize("value", ["0", "500ms", "9s"])
def test_audit_resync_has_a_floor(value: str) -> None:
    result = CliRunner().invoke(main, ["guard", "--audit-resync", value])
    assert result.exit_code == 2
    assert "--audit-resync" in result.output and "at least 10s" in result.output
