"""`CatalogResponder`: the entry the pipeline uses to install the catalog and answer catalog queries."""

from __future__ import annotations

import platform
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime

import duckdb
from sqlglot import exp

from engine_host.pgcompat.catalog.relations import _USER_SCOPE
from engine_host.pgcompat.catalog.rewrite.query import _Translation, _Translator
from engine_host.pgcompat.catalog.rewrite.recognise import classify, mentions_catalog, parse_query
from engine_host.pgcompat.catalog.rewrite.session import fill_session_values
from engine_host.pgcompat.catalog.rewrite.visibility import wrap_visible
from engine_host.pgcompat.catalog.views import install_catalog

Visibility = Callable[[str, str], bool] | Collection[tuple[str, str]]


class CatalogResponder:
    """Recognises PostgreSQL catalog queries and answers them with DuckDB SQL over the hd_pg schema."""

    _CACHE_SIZE = 512

    def __init__(self, server_version: str = "15.8", database_name: str = "hd", *, owner: str = "hd",
                 search_path: Sequence[str] = ("main",), settings: Mapping[str, str] | None = None) -> None:
        """`settings` are the server's setting defaults reported by pg_settings and current_setting()."""
        self.server_version = server_version
        self.database_name = database_name
        self.owner = owner
        self.search_path = tuple(search_path)
        arch = platform.machine() or "x86_64"
        vendor = "pc" if arch in ("x86_64", "i686") else "unknown"
        self.version_text = (
            f"PostgreSQL {server_version} (Hardened Duck, DuckDB v{duckdb.__version__}) "
            f"on {arch}-{vendor}-linux-gnu, 64-bit"
        )
        self.started_at = datetime.now(UTC).isoformat(sep=" ")
        self._settings = {**self._default_settings(), **(settings or {})}
        self._translator = _Translator(self)
        self._cache: OrderedDict[str, _Translation | None] = OrderedDict()
        self._finished: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self._lock = threading.Lock()
        self._names_cursor: duckdb.DuckDBPyConnection | None = None
        self._names_lock = threading.Lock()

    def _default_settings(self) -> dict[str, str]:
        major, _, minor = self.server_version.partition(".")
        return {
            "server_version": self.server_version,
            "server_version_num": f"{int(major):d}{int(minor or 0):04d}",
            "server_encoding": "UTF8", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
            "IntervalStyle": "postgres", "TimeZone": "UTC", "integer_datetimes": "on",
            "standard_conforming_strings": "on", "max_identifier_length": "63", "max_index_keys": "32",
            "block_size": "8192", "default_table_access_method": "heap", "jit": "off",
            "transaction_isolation": "repeatable read", "default_transaction_isolation": "repeatable read",
            "transaction_read_only": "off", "default_transaction_read_only": "off", "application_name": "",
            "search_path": ", ".join(self.search_path), "lc_collate": "C", "lc_ctype": "C", "max_connections": "100",
            "is_superuser": "off", "bytea_output": "hex", "extra_float_digits": "1", "statement_timeout": "0",
            "lock_timeout": "0", "idle_in_transaction_session_timeout": "0", "idle_session_timeout": "0",
            "row_security": "on", "default_tablespace": "", "data_checksums": "off",
        }

    # installation

    def install(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create or refresh the hd_pg schema; run once at startup, before the database is locked down."""
        install_catalog(con, self.server_version, self.database_name, self.owner, self.search_path,
                        self.version_text, self._settings)
        self._names_cursor = con.cursor()

    # answering

    def rewrite(self, sql: str, *, visible: Visibility | None = None, user: str | None = None,
                settings: Mapping[str, str] | None = None, backend_pid: int | None = None) -> str | None:
        """DuckDB SQL answering `sql` if it is a catalog query, else None.

        `visible` restricts the answer to those (schema, table) relations; `user`, `settings` and
        `backend_pid` are the session's values for current_user, current_setting() and
        pg_backend_pid().
        """
        if not mentions_catalog(sql):
            return None
        translation = self._translation(sql)
        if translation is None:
            return None
        pairs = None if visible is None else self._visible_pairs(visible)
        if pairs is None and not translation.session_dependent:
            if translation.plain_sql is None:
                translation.plain_sql = self._finish(translation.tree, None, None, None, None)
            return translation.plain_sql
        # Finishing copies and regenerates the whole tree (tens of ms for a driver's big query), and
        # drivers repeat the same query per table with other parameters: keep the finished text per
        # everything it depends on.
        key = (sql, None if pairs is None else tuple(pairs), user,
               None if settings is None else tuple(sorted(settings.items())), backend_pid)
        with self._lock:
            finished = self._finished.get(key)
            if finished is not None:
                self._finished.move_to_end(key)
                return finished
        finished = self._finish(translation.tree, pairs, user, settings, backend_pid)
        with self._lock:
            self._finished[key] = finished
            if len(self._finished) > self._CACHE_SIZE:
                self._finished.popitem(last=False)
        return finished

    def parameter_types(self, sql: str) -> dict[int, int]:
        """PostgreSQL type OIDs a catalog query casts its parameters to (`{n: oid}` for `$n::type`).

        DuckDB infers other types for some of them (`$1::oid[]` becomes UINTEGER[], sent as int8[]),
        and asyncpg, which asks the server for parameter types, only encodes oid[] and text[]
        arrays natively; describing such parameters with these OIDs keeps its type introspection
        working. Empty when `sql` is not a catalog query.
        """
        if not mentions_catalog(sql):
            return {}
        translation = self._translation(sql)
        return dict(translation.parameter_types) if translation is not None else {}

    def _translation(self, sql: str) -> _Translation | None:
        with self._lock:
            if sql in self._cache:
                self._cache.move_to_end(sql)
                return self._cache[sql]
        translation = self._translate(sql)
        with self._lock:
            self._cache[sql] = translation
            if len(self._cache) > self._CACHE_SIZE:
                self._cache.popitem(last=False)
        return translation

    def _translate(self, sql: str) -> _Translation | None:
        tree = parse_query(sql)
        if tree is None:
            return None
        found = classify(tree, self.database_name)
        if found is None:
            return None
        return self._translator.translate(tree, found)

    def _finish(self, tree: exp.Expr, pairs: list[tuple[str, str]] | None, user: str | None,
                settings: Mapping[str, str] | None, backend_pid: int | None) -> str:
        tree = tree.copy()
        fill_session_values(tree, self.owner, user, settings, backend_pid, self.search_path)
        wrap_visible(tree, pairs)
        return tree.sql(dialect="duckdb")

    def _visible_pairs(self, visible: Visibility) -> list[tuple[str, str]]:
        if not callable(visible):
            return sorted(set(visible))
        if self._names_cursor is None:
            raise RuntimeError("CatalogResponder.install() must run before rewrite() can evaluate visibility")
        with self._names_lock:
            names = self._names_cursor.execute(
                f"SELECT schema_name, table_name FROM duckdb_tables() WHERE {_USER_SCOPE} "
                f"UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND {_USER_SCOPE} "
                f"UNION ALL SELECT schema_name, sequence_name FROM duckdb_sequences() WHERE {_USER_SCOPE}"
            ).fetchall()
        return sorted({(schema, name) for schema, name in names if visible(schema, name)})
