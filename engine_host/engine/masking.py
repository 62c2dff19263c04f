"""Keyed hash masking inside DuckDB: HMAC-SHA256 with a per-environment key, computed in the plan.

Plain SHA-256 of an SSN is reversed by brute force in minutes (there are only 10^9 of them), so the
`hash` mask is HMAC-SHA256 under a secret key that differs per environment (live/test): the same
input always gives the same output (joins on masked columns keep working), and without the key
nobody can test a guess.

The macro `hd_pg.hd_mask_hash(v)` is the textbook HMAC construction over DuckDB's `sha256`:
    sha256(opad_key || unhex(sha256(ipad_key || v)))
with the two padded keys held in per-connection DuckDB variables, set when a session opens. The
guard refuses user calls to `getvariable`, `duckdb_variables()` and anything in `hd_pg`, so the
key and the macro are out of reach of SQL. DuckDB folds variables into plans as constants, so
EXPLAIN would print the key: EXPLAIN statements use `hd_mask_hash_redacted`, the same construction
over an all-zero key, whose plan shows nothing secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import duckdb

from hd_core.ports import ControlStore

SCHEMA = "hd_pg"
_BLOCK = 64  # SHA-256 block size in bytes
_KEY_BYTES = 32
_IPAD_VARIABLE = "hd_mask_ipad"
_OPAD_VARIABLE = "hd_mask_opad"
_ZERO_IPAD = bytes([0x36]) * _BLOCK
_ZERO_OPAD = bytes([0x5C]) * _BLOCK


def _hmac_sql(ipad: str, opad: str) -> str:
    return (f"CASE WHEN v IS NULL THEN NULL ELSE sha256({opad} || unhex(sha256({ipad} || encode(CAST(v AS VARCHAR)))))"
            " END")


def install_mask_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create the masking macros in `hd_pg` (run once at startup, before the lockdown)."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    con.execute(f"CREATE OR REPLACE MACRO {SCHEMA}.hd_mask_hash(v) AS "
                + _hmac_sql(f"getvariable('{_IPAD_VARIABLE}')", f"getvariable('{_OPAD_VARIABLE}')"))
    con.execute(f"CREATE OR REPLACE MACRO {SCHEMA}.hd_mask_hash_redacted(v) AS "
                + _hmac_sql(f"from_hex('{_ZERO_IPAD.hex()}')", f"from_hex('{_ZERO_OPAD.hex()}')"))


def set_session_mask_key(cursor: duckdb.DuckDBPyConnection, key: bytes) -> None:
    """Give one DuckDB connection the padded HMAC keys its `hd_mask_hash` calls use."""
    padded = key.ljust(_BLOCK, b"\0") if len(key) <= _BLOCK else hashlib.sha256(key).digest().ljust(_BLOCK, b"\0")
    cursor.execute(f"SET VARIABLE {_IPAD_VARIABLE} = $1::BLOB", [bytes(b ^ 0x36 for b in padded)])
    cursor.execute(f"SET VARIABLE {_OPAD_VARIABLE} = $1::BLOB", [bytes(b ^ 0x5C for b in padded)])


def mask_hash(key: bytes, value: str) -> str:
    """What `hd_pg.hd_mask_hash` returns for `value` under `key` (for tests and offline joins)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def ensure_mask_keys(store: ControlStore, environments: tuple[str, ...] = ("live", "test")) -> dict[str, bytes]:
    """The per-environment masking keys of a local install: generated on first use, then reused.

    Local mode only keeps them in the control store; a deployment takes them from KMS.
    """
    keys = {}
    for env in environments:
        candidate = base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")
        stored = store.put_setting_if_absent(f"mask_hash_key.{env}", candidate)
        keys[env] = base64.b64decode(stored, validate=True)
    return keys
