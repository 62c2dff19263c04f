"""`hd dev`'s control server delivers webhooks from its own background thread: over real HTTP, end to end."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine_host.devmode.control_server import ControlApiServer
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import bootstrap_local_owner
from hd_core.control_settings import ControlApiSettings
from hd_core.services import assemble_services
from hd_core.webhook_delivery import DeliveryOptions, default_options
from hd_core.webhook_models import DeliveryStatus
from tests.webhook_receiver import WebhookReceiver, make_self_signed


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    cert, key = make_self_signed(tmp_path)
    served = WebhookReceiver(cert, key)
    yield served
    served.close()


def _call(port: int, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"X-API-Key": key, **({"Content-Type": "application/json"} if payload else {})}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_local_control_server_delivers_an_admin_change_to_a_loopback_receiver(
    tmp_path: Path, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    owner = bootstrap_local_owner(store, ApiKeyHasher(), org_name="Dev Org", email="owner@example.com")
    assert owner.api_key_plaintext is not None
    services = assemble_services(
        ControlApiSettings(jwt_issuer="https://hd.test", jwt_audience="hardened-duck"), store=store,
        keys=LocalKeyFile(tmp_path / "keys" / "local-keys.json"),
        checkpoints=LocalFolderCheckpointStore(tmp_path), query_audit=LocalFolderAuditArchive(tmp_path),
    )
    server = ControlApiServer(port=0)
    server.webhook_options = DeliveryOptions(local_mode=True, ca_file=str(receiver.cert_path))
    server.start(services, lifecycle_interval=None)
    try:
        assert default_options().local_mode  # hd dev: loopback receivers are allowed
        org = f"/v1/organizations/{owner.org.org_id}"
        status, created = _call(server.port, "POST", f"{org}/webhooks", owner.api_key_plaintext,
                                {"url": receiver.url(), "events": ["policy.changed"]})
        assert status == 201, created
        receiver.secret = created["secret"]
        status, _ = _call(server.port, "POST", f"{org}/policies", owner.api_key_plaintext,
                          {"kind": "mask", "rule_id": "m_dev", "table": "main.t", "column": "c", "function": "full",
                           "pending": True})  # no engine here records main.t
        assert status == 201
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not receiver.received:
            time.sleep(0.02)
        [request] = receiver.received
        assert request.verified and json.loads(request.body)["data"]["id"] == "m_dev"
        log: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            status, log = _call(server.port, "GET", f"{org}/webhooks/{created['endpoint_id']}/deliveries",
                                owner.api_key_plaintext)
            if log and log[0]["status"] == DeliveryStatus.DELIVERED.value:
                break
            time.sleep(0.02)
        assert status == 200 and [(entry["status"], entry["attempts"]) for entry in log] == [("delivered", 1)]
    finally:
        server.stop()
        store.close()
    assert not default_options().local_mode  # stopping hd dev's server leaves no local-mode allowance behind
