"""What `hd dev` checks in its state folder before it writes anything, and the recovery each refusal names.

A start never replaces state it finds: a damaged control store, key file or DuckDB file is refused
as it is (hash-identical afterwards), and a missing or empty control store next to the files an
earlier start left (`EARLIER_STATE`) is refused rather than given a new Owner, who would otherwise
inherit the old audit trail, tables and keys. `data/` is not in that list: it is where the operator
puts Parquet files before a first start (README "Registering your own Parquet"), a start never
writes it, and anyone who could empty the control store can read those files directly anyway.
"""

from __future__ import annotations

from pathlib import Path

from hd_core.errors import HdError

# What a start of `hd dev` writes besides the control store (STATE_DIR/<name>); folders count when not empty.
EARLIER_STATE: tuple[str, ...] = ("owner.key", "keys/local-keys.json", "engine.duckdb", "audit", "demo-keys")


class StateRefused(HdError):
    """The state folder holds something a start must not use or replace as it is; the message says what to do."""

    code = "HD_ERR_STATE_REFUSED"
    exit_code = 3


def earlier_state(state_dir: Path) -> list[str]:
    """The entries of `EARLIER_STATE` present in `state_dir` (folders only when they hold a file)."""
    found = []
    for name in EARLIER_STATE:
        path = state_dir / name
        if path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*"))):
            found.append(f"{name}/" if path.is_dir() else name)
    return found


def start_afresh(state_dir: Path) -> str:
    """The recovery step that gives up the folder's state without destroying it."""
    return f"to start a new install instead, move the folder away (mv {state_dir} {state_dir}.old) and start again"


def refuse_missing_store(store_path: Path, found: list[str]) -> None:
    """Raise `StateRefused` if the control store is missing or empty while earlier state is present."""
    if not found or (store_path.is_file() and store_path.stat().st_size > 0):
        return
    what = "missing" if not store_path.exists() else "empty"
    raise StateRefused(
        f"control store {store_path} is {what} but {store_path.parent} holds earlier state ({', '.join(found)}), "
        f"so no new Owner is made over it: restore control.sqlite3 from a backup, or {start_afresh(store_path.parent)}")


def damaged_store_advice(store_path: Path) -> str:
    """What to do about a control store SQLite refuses."""
    salvaged = store_path.with_name("control.recovered.sqlite3")
    return (f"stop every hd process using {store_path.parent}, then restore control.sqlite3 from a backup, or salvage "
            f"it (sqlite3 {store_path} .recover | sqlite3 {salvaged}) and move the copy into place; "
            "hd never repairs or replaces it")


def check_engine_database(path: Path) -> None:
    """Raise `StateRefused` unless DuckDB can attach `path` (if present) read-only; the file is not modified."""
    if not path.exists():
        return
    import duckdb  # here, not at import: `hd reissue-owner-key` and friends load this module without the engine

    from engine_host.engine.views import sql_string

    probe = duckdb.connect(":memory:")
    try:
        # READ_ONLY replays a leftover WAL in memory only, so a crash-consistent file passes untouched.
        probe.execute(f"ATTACH {sql_string(str(path))} AS probe (READ_ONLY)")
    except duckdb.Error as exc:
        detail = " ".join(str(exc).split())
        if "lock" in detail.lower():
            raise StateRefused(f"DuckDB file {path} is in use by another process ({detail}); stop the other hd "
                               f"process using {path.parent} first") from None
        raise StateRefused(
            f"DuckDB file {path} cannot be opened ({detail}): restore it from a backup, or move it away to start "
            "without the tables created over the wire (Parquet tables in data/ are not affected); "
            "hd never replaces it") from None
    finally:
        probe.close()
