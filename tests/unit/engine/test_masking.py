"""Hash-mask keys: made by the key provider, stored only wrapped, the same for every start."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from engine_host.engine.masking import ENVIRONMENTS, ensure_mask_keys, stored_mask_keys
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import KeyUnavailable


@pytest.fixture
def store(tmp_path: Path) -> SqliteControlStore:
    return SqliteControlStore(tmp_path / "control.sqlite3")


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyFile:
    return LocalKeyFile(tmp_path / "keys" / "local-keys.json")


def test_the_store_holds_each_key_only_wrapped(store: SqliteControlStore, keys: LocalKeyFile) -> None:
    made = ensure_mask_keys(store, keys)
    assert set(made) == set(ENVIRONMENTS) and made["live"] != made["test"]
    for env, key in made.items():
        assert store.get_setting(f"mask_hash_key.{env}") is None
        wrapped = store.get_setting(f"mask_hash_key_wrapped.{env}")
        assert wrapped is not None and key not in base64.b64decode(wrapped)


def test_every_later_start_unwraps_the_same_keys(store: SqliteControlStore, keys: LocalKeyFile) -> None:
    assert ensure_mask_keys(store, keys) == ensure_mask_keys(store, keys) == stored_mask_keys(store, keys)


def test_another_key_file_cannot_unwrap_them(store: SqliteControlStore, keys: LocalKeyFile, tmp_path: Path) -> None:
    ensure_mask_keys(store, keys)
    with pytest.raises(KeyUnavailable):
        ensure_mask_keys(store, LocalKeyFile(tmp_path / "other" / "local-keys.json"))


def test_a_local_install_keeps_the_plaintext_key_an_earlier_version_stored(
    store: SqliteControlStore, keys: LocalKeyFile
) -> None:
    earlier = b"e" * 32
    store.put_setting("mask_hash_key.test", base64.b64encode(earlier).decode())
    assert ensure_mask_keys(store, keys, keep_legacy_plaintext=True)["test"] == earlier
    assert ensure_mask_keys(store, keys)["test"] != earlier  # a deployment never reads one
