"""A mismatch's rows leave a replay masked with the engine's rules, never as raw PII (real PostgreSQL).

Two schemas of the real PostgreSQL stand for the two sides (`replay_statement` reads the reference inside
`BEGIN READ ONLY` through a server-side cursor and streams the other side, as a replay does); the engine's
side differs by one row, so each statement is a mismatch whose differing rows are shown. PII is planted in
masked columns. The masking comes from `control_masking` over a real control store: the mask rules stored
there, the catalog an engine host recorded, the replay's ServiceAccount and key as `start_replay` issued
them, and the environment's mask key as the engine keeps it (`engine_host.engine.masking.ensure_mask_keys`).
The stored batch document and the report are grepped for every planted value.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from engine_host.engine.masking import ensure_mask_keys, mask_hash
from hd_core import directory
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.local_shadow import LocalFolderShadowArtefacts, LocalSealedShadowSecrets
from hd_core.bootstrap import DEFAULT_ORG_SETTING
from hd_core.catalog_schemas import CatalogRecorder
from hd_core.models import KeyEnv, Role
from hd_core.policies import MaskFunction, MaskRule
from hd_core.shadow import replay
from hd_core.shadow.compare import redact_all
from hd_core.shadow.report import StatementResult, build_report
from hd_core.shadow.sample_masks import control_masking
from tests.unit.core.test_directory import make_control_plane

SSN, EMAIL, DIAGNOSIS = "078-05-1120", "maria.planted@example.org", "planted-diagnosis-hiv"
PLANTED = (SSN, EMAIL, DIAGNOSIS, "maria.planted")


class _NoExecutions:
    def start(self, replay_id: str, execution_input: object) -> str:
        return f"local:{replay_id}"

    def status(self, execution_id: str) -> replay.ExecutionStatus:
        return "RUNNING"


@pytest.fixture
def sides(reference_pg: str) -> Iterator[tuple[str, str]]:
    """Schema `<ref>` and `<eng>` each with crm-like `customers`; the engine's lacks the planted row's twin."""
    ref, eng = f"shadow_ref_{uuid.uuid4().hex[:8]}", f"shadow_eng_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(reference_pg, autocommit=True) as conn:
        for schema in (ref, eng):
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.customers (id int, name text, email text, ssn text, "
                         "diagnosis text)")
            conn.execute(f"INSERT INTO {schema}.customers VALUES (1, 'Bo', 'bo@example.net', '111-22-3333', 'ok')")
        conn.execute(f"INSERT INTO {ref}.customers VALUES (2, 'Maria', %s, %s, %s)", (EMAIL, SSN, DIAGNOSIS))
    try:
        yield ref, eng
    finally:
        with psycopg.connect(reference_pg, autocommit=True) as conn:
            for schema in (ref, eng):
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_mismatchs_rows_are_masked_with_the_engines_rules_and_no_planted_pii_is_stored(
        tmp_path: Path, reference_pg: str, sides: tuple[str, str]) -> None:
    ref, eng = sides
    keys = LocalKeyFile(tmp_path / "keys.json")
    plane = make_control_plane(tmp_path, keys)
    org = plane.org.org_id
    plane.store.put_setting(DEFAULT_ORG_SETTING, org)  # the engine's tables are this organisation's
    CatalogRecorder(plane.store).record({f"{schema}.customers": [(c, "VARCHAR") for c in
                                                                 ("id", "name", "email", "ssn", "diagnosis")]
                                         for schema in (ref, eng)})
    for schema in (ref, eng):
        plane.store.put_policy(MaskRule(f"m_ssn_{schema}", org, f"{schema}.customers", "ssn", MaskFunction.HASH))
        plane.store.put_policy(MaskRule(f"m_email_{schema}", org, f"{schema}.customers", "email",
                                        MaskFunction.PARTIAL, 4))
        plane.store.put_policy(MaskRule(f"m_dx_{schema}", org, f"{schema}.customers", "diagnosis", MaskFunction.FULL,
                                        exempt_roles=(Role.SERVICE_ACCOUNT,)))
    mask_keys = ensure_mask_keys(plane.store, keys, keep_legacy_plaintext=True)
    services = replay.ReplayServices(LocalFolderShadowArtefacts(tmp_path),
                                     LocalSealedShadowSecrets(tmp_path / "shadow" / "secrets", keys),
                                     replay.EngineEndpoint("127.0.0.1", _closed_port(), sslmode="disable"),
                                     _NoExecutions())
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, org, "staging", KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"select 1;\n", "sql")
    replay_id = replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
                                    comparison_dsn=reference_pg, comparison_secret_arn=None,
                                    options=replay.ReplayOptions(search_path=ref))
    record = services.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
    assert record is not None
    masking = control_masking(plane.store, mask_keys.get)(record)
    assert masking.hash_key == mask_keys["test"] and masking.subject.role is Role.SERVICE_ACCOUNT

    statements = {
        "traced": "SELECT id, name, email, ssn, diagnosis FROM customers ORDER BY id",
        "expressions": "SELECT id, upper(email) AS email, ssn || '' AS ssn, length(diagnosis) AS n "
                       "FROM customers ORDER BY id",
        "star": "SELECT * FROM customers ORDER BY id",
    }
    results = []
    with psycopg.connect(reference_pg) as reference, psycopg.connect(reference_pg, autocommit=True) as engine:
        reference.read_only = True
        reference.execute(f"SET search_path = {ref}")
        reference.commit()
        engine.execute(f"SET search_path = {eng}")
        for index, (_, sql) in enumerate(statements.items()):
            comparison, ref_ms, eng_ms = replay.replay_statement(reference, engine, sql, (), 10, masking=masking)
            assert comparison.verdict == "mismatch", comparison
            results.append(StatementResult(index, index + 1, sql, comparison, ref_ms, eng_ms))

    traced = results[0].comparison.reference_only
    assert traced == ({"id": 2, "name": "Maria", "email": "***.org", "ssn": mask_hash(mask_keys["test"], SSN),
                       "diagnosis": redact_all("diagnosis", DIAGNOSIS)},)
    assert results[2].comparison.reference_only == traced  # `*` over a known table traces like the list
    assert results[1].comparison.reference_only == ({"id": 2, "email": redact_all("email", EMAIL),
                                                     "ssn": redact_all("ssn", SSN), "n": redact_all("n", 21)},)
    # Stored as a batch document and as the report, with every export: no planted value anywhere.
    services.artefacts.put_json(f"{replay.replay_prefix(replay_id)}batches/000000.json", {
        "batch": 0, "results": [{"index": r.index, "comparison": r.comparison.to_dict(), "reference_ms": 1.0,
                                 "engine_ms": 1.0} for r in results]})
    report = build_report(query_set.id, results)
    services.artefacts.put_json(f"{replay.replay_prefix(replay_id)}report.json", report.to_dict())
    texts = [report.to_json(), report.to_markdown(), json.dumps(report.to_dict())]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("*.json") if "shadow" in p.parts]
    for planted in PLANTED:
        assert not [t for t in texts if planted in t], planted
