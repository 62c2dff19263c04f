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

Next to each hash macro, `hd_keys.hd_mask_key_id_<env>()` returns an identifier of the key it embeds
(an HMAC of a fixed label under the key: it names the key version without revealing anything that
tests a guess). Hash values precomputed into a native copy (engine_host/data/stored_masks.py) are
read only while this identifier still equals the one they were computed under, so a changed key
falls back to computing the hash in the query at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

import duckdb

from hd_core.ports import KeyProvider, SettingsStore

CATALOG = "hd_keys"
MACRO = "hd_mask_hash"
KEY_ID_MACRO = "hd_mask_key_id"
_BLOCK = 64  # SHA-256 block size in bytes
_KEY_BYTES = 32
ENVIRONMENTS = ("live", "test")


def macro_name(env: str) -> str:
    """The hash macro of one environment (what the rewrite calls for sessions of that environment)."""
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}")
    return f"{MACRO}_{env}"


def key_id_macro_name(env: str) -> str:
    """The macro returning the identifier of one environment's current key."""
    macro_name(env)  # validates env
    return f"{KEY_ID_MACRO}_{env}"


def key_id(key: bytes) -> str:
    """A key's identifier: equal for equal keys, and no help in testing a guess of a masked value."""
    return hmac.new(key, b"hd-mask-key-id", hashlib.sha256).hexdigest()[:32]


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
    # One transaction: no statement sees a key's macro without the identifier that names it.
    con.execute("BEGIN TRANSACTION")
    try:
        for env, key in keys.items():
            con.execute(f"CREATE OR REPLACE MACRO {CATALOG}.main.{macro_name(env)}(v) AS {_hmac_sql(key)}")
            con.execute(f"CREATE OR REPLACE MACRO {CATALOG}.main.{key_id_macro_name(env)}() AS '{key_id(key)}'")
        con.execute(f"CREATE OR REPLACE MACRO {CATALOG}.main.{MACRO}_redacted(v) AS {_hmac_sql(b'')}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def mask_hash(key: bytes, value: str) -> str:
    """What the hash macro returns for `value` under `key` (for tests and offline joins)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _wrapped_setting(env: str) -> str:
    return f"mask_hash_key_wrapped.{env}"


def _legacy_setting(env: str) -> str:
    return f"mask_hash_key.{env}"


def _context(env: str) -> dict[str, str]:
    # KMS binds the wrapped key to this context: a ciphertext copied to another purpose won't unwrap.
    return {"purpose": "hd-mask-hash", "env": env}


def ensure_mask_keys(
    store: SettingsStore, keys: KeyProvider, *, keep_legacy_plaintext: bool = False
) -> dict[str, bytes]:
    """The per-environment masking keys: made on first use by the key provider (KMS), then reused.

    The control store holds only each key wrapped by the provider; every host unwraps it at start and
    keeps the plaintext in memory (in the `hd_keys` macros), so a copy of the control table alone
    tests no guess. Concurrent first starts agree: the first wrapped key stored wins and is the one
    every host unwraps. `keep_legacy_plaintext` (local mode only) keeps using a key an earlier
    version stored in plaintext, so existing hashed values stay joinable; a deployment never reads
    a plaintext key from its table.
    """
    result = {}
    for env in ENVIRONMENTS:
        legacy = store.get_setting(_legacy_setting(env)) if keep_legacy_plaintext else None
        if legacy is not None:
            result[env] = base64.b64decode(legacy, validate=True)
            continue
        wrapped = store.get_setting(_wrapped_setting(env))
        if wrapped is None:
            fresh = keys.generate_data_key(_context(env))
            wrapped = store.put_setting_if_absent(
                _wrapped_setting(env), base64.b64encode(fresh.ciphertext).decode("ascii"))
        result[env] = keys.decrypt_data_key(base64.b64decode(wrapped, validate=True), _context(env))
    return result


def stored_mask_keys(store: SettingsStore, keys: KeyProvider) -> dict[str, bytes]:
    """The masking keys already made, unwrapped (for offline joins and tests); creates none."""
    found = {}
    for env in ENVIRONMENTS:
        legacy = store.get_setting(_legacy_setting(env))
        wrapped = store.get_setting(_wrapped_setting(env))
        if legacy is not None:
            found[env] = base64.b64decode(legacy, validate=True)
        elif wrapped is not None:
            found[env] = keys.decrypt_data_key(base64.b64decode(wrapped, validate=True), _context(env))
    return found
