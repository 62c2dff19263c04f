"""The API contract: the checked-in OpenAPI document matches the code, is served, and the API keeps it.

The schemathesis run generates requests from the document for every operation (bounded: a few
examples each) against a real local server, authenticated as an Owner, and fails on any 5xx or on a
response that does not match the document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from engine_host.control_server import ControlApiServer
from functions.openapi import DOCUMENT_PATH, openapi_document, render
from functions.shared.settings import ControlApiSettings
from functions.shared.wiring import assemble_services, install_services
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import bootstrap_local_owner, ensure_environments

schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT_PATH.read_text(encoding="utf-8")))


def test_the_checked_in_document_matches_the_resolvers() -> None:
    assert DOCUMENT_PATH.read_text(encoding="utf-8") == render(openapi_document()), (
        "functions/openapi.json is stale: run `python -m functions.openapi --write`"
    )


def test_every_operation_names_its_function_and_documents_the_error_shape() -> None:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["x-hd-function"], (method, path)
            error = operation["responses"]["401"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root: Path = tmp_path_factory.mktemp("api")
    store = SqliteControlStore(root / "control.sqlite3")
    owner = bootstrap_local_owner(store, ApiKeyHasher(), org_name="Fuzz Org", email="owner@example.com")
    ensure_environments(store, owner.org.org_id)
    install_services(assemble_services(
        ControlApiSettings(jwt_issuer="https://hd.test"),
        store=store,
        keys=LocalKeyFile(root / "keys" / "local-keys.json"),
        checkpoints=LocalFolderCheckpointStore(root),
        query_audit=LocalFolderAuditArchive(root),
    ))
    server = ControlApiServer("127.0.0.1", 0)
    server.start()
    assert owner.api_key_plaintext is not None
    try:
        yield f"http://127.0.0.1:{server.port}", owner.api_key_plaintext
    finally:
        server.stop()
        install_services(None)
        store.close()


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_never_fails_and_always_matches_its_document(
    case: schemathesis.Case, live_api: tuple[str, str]
) -> None:
    base_url, key = live_api
    case.call_and_validate(base_url=base_url, headers={"X-API-Key": key})
