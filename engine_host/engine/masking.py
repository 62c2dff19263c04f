"""Keyed hash masking inside DuckDB: HMAC-SHA256 with a per-environment key, computed in the plan.

Plain SHA-256 of an SSN is reversed by brute force in minutes (there are only 10^9 of them), so the
`hash` mask is HMAC-SHA256 under a secret key that differs per environment (live/test): the same
input always gives the same output (joins on masked columns keep working), and without the key
nobody can test a guess.

`hd_keys.hd_mask_hash_<env>(v)` is the textbook HMAC construction over DuckDB's `sha256`:
    sha256(opad_key || unhex(sha256(ipad_key || v)))
with the padded keys written into the macro body. The macros live in `hd_keys`, an in-memory
database attached at startup, so the keys are never written to `engine.duckdb`; the guard refuses
every user reference to `hd_keys`, `duckdb_*()` functions and ATTACH, so SQL cannot call the
macros (which would let it test guesses) or read their definitions. Constant keys keep filters
pushed down into scans (a `getvariable()` key blocked that and tripled the cost of a point lookup).
EXPLAIN prints plan constants, so EXPLAIN statements use `hd_mask_hash_redacted`, the same
construction over an all-zero key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

import duckdb

from hd_core.ports import ControlStore

CATALOG = "hd_keys"
MACRO = "hd_mask_hash"
_BLOCK = 64  # SHA-256 block size in bytes
_KEY_BYTES = 32
ENVIRONMENTS = ("live", "test")


def macro_name(env: str) -> str:
    """The hash macro of one environment (what the rewrite calls for sessions of that environment)."""
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}")
    return f"{MACRO}_{env}"


def _hmac_sql(key: bytes) -> str:
    padded = key.ljust(_BLOCK, b"\0") if len(key) <= _BLOCK else hashlib.sha256(key).digest().ljust(_BLOCK, b"\0")
    ipad = bytes(b ^ 0x36 for b in padded).hex()
    opad = bytes(b ^ 0x5C for b in padded).hex()
    return (f"CASE WHEN v IS NULL THEN NULL ELSE sha256(from_hex('{opad}') || unhex(sha256(from_hex('{ipad}') "
            "|| encode(CAST(v AS VARCHAR))))) END")


def install_mask_macros(con: duckdb.DuckDBPyConnection, keys: Mapping[str, bytes]) -> None:
    """Attach the in-memory `hd_keys` catalog and create the hash macros (at startup, before the lockdown)."""
    attached = {row[0] for row in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
    if CATALOG not in attached:
        con.execute(f"ATTACH ':memory:' AS {CATALOG}")
    for env, key in keys.items():
        con.execute(f"CREATE OR REPLACE MACRO {CATALOG}.main.{macro_name(env)}(v) AS {_hmac_sql(key)}")
    con.execute(f"CREATE OR REPLACE MACRO {CATALOG}.main.{MACRO}_redacted(v) AS {_hmac_sql(b'')}")


def mask_hash(key: bytes, value: str) -> str:
    """What the hash macro returns for `value` under `key` (for tests and offline joins)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def ensure_mask_keys(store: ControlStore) -> dict[str, bytes]:
    """The per-environment masking keys of a local install: generated on first use, then reused.

    Local mode only keeps them in the control store; a deployment takes them from KMS.
    """
    keys = {}
    for env in ENVIRONMENTS:
        candidate = base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")
        stored = store.put_setting_if_absent(f"mask_hash_key.{env}", candidate)
        keys[env] = base64.b64decode(stored, validate=True)
    return keys
