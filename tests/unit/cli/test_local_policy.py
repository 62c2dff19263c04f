"""`hd local-policy` edits the local install's policies offline; `hd policy`, its old name, still works and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_host.cli import main
from hd_core.adapters.sqlite_store import SqliteControlStore


def test_local_policy_lists_the_state_folders_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SqliteControlStore(tmp_path / "control.sqlite3").close()

    assert main(["local-policy", "--state-dir", str(tmp_path), "list"]) == 0
    assert capsys.readouterr().err == ""


def test_policy_still_works_and_says_it_is_deprecated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SqliteControlStore(tmp_path / "control.sqlite3").close()

    assert main(["policy", "--state-dir", str(tmp_path), "list"]) == 0
    err = capsys.readouterr().err
    assert "deprecated" in err and "hd local-policy" in err


def test_help_names_local_policy_apart_from_policies(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])

    assert "local-policy" in capsys.readouterr().out
