"""Webhook delivery below the API: the SSRF guard by address class, pinned connections, retries to the dead letter,
hd dev's delivery thread, and the AWS path through moto SQS and the delivery Lambda."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.models import utc_now
from hd_core.webhook_admin import secret_sealer
from hd_core.webhook_delivery import (
    RETRY_WINDOW,
    AttemptResult,
    DeliveryOptions,
    LocalDeliveryWorker,
    UnsafeWebhookTarget,
    address_refusal,
    backoff_ceiling,
    deliver,
    post_signed,
    resolve_target,
)
from hd_core.webhook_models import DeliveryStatus, WebhookEndpoint
from hd_core.webhooks import emit, new_secret, set_dispatcher
from tests.clocks import HandWoundClock
from tests.webhook_receiver import WebhookReceiver, make_self_signed

# --- the SSRF guard, address by address ---------------------------------------------------------

REFUSED = {
    "10.0.0.1": "private", "172.16.5.4": "private", "192.168.1.1": "private", "100.64.0.1": "shared (CGNAT)",
    "127.0.0.1": "loopback", "127.5.5.5": "loopback", "169.254.169.254": "link-local (IMDS)",
    "169.254.0.1": "link-local", "224.0.0.1": "multicast", "239.255.255.250": "multicast",
    "240.0.0.1": "reserved", "255.255.255.255": "broadcast", "0.0.0.0": "unspecified",
    "192.0.2.10": "documentation", "198.18.0.1": "benchmarking",
    "::1": "IPv6 loopback", "::": "IPv6 unspecified", "fd12:3456::1": "IPv6 ULA", "fc00::1": "IPv6 ULA",
    "fe80::1": "IPv6 link-local", "fe80::1%eth0": "IPv6 link-local with zone", "fec0::1": "IPv6 site-local",
    "ff02::1": "IPv6 multicast", "2001:db8::1": "IPv6 documentation",
    "::ffff:10.0.0.1": "IPv4-mapped private", "::ffff:169.254.169.254": "IPv4-mapped IMDS",
    "::ffff:127.0.0.1": "IPv4-mapped loopback", "64:ff9b::a9fe:a9fe": "NAT64 of IMDS",
    "2002:a9fe:a9fe::1": "6to4 of IMDS", "2002:0a00:0001::1": "6to4 of a private address",
    "fd00:ec2::254": "the IPv6 IMDS endpoint",
}
ALLOWED = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "kind"), sorted(REFUSED.items()))
def test_a_non_public_address_is_refused(address: str, kind: str) -> None:
    assert address_refusal(address) is not None, kind


@pytest.mark.parametrize("address", ALLOWED)
def test_a_public_address_is_allowed(address: str) -> None:
    assert address_refusal(address) is None


def test_local_mode_allows_loopback_and_nothing_else() -> None:
    assert address_refusal("127.0.0.1", allow_loopback=True) is None
    assert address_refusal("::1", allow_loopback=True) is None
    for address in ("10.0.0.1", "169.254.169.254", "fd00::1", "::ffff:192.168.0.1"):
        assert address_refusal(address, allow_loopback=True) is not None


def _resolver(table: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_a_name_that_resolves_to_any_private_address_is_refused() -> None:
    options = DeliveryOptions(resolver=_resolver({"hooks.example.com": ["93.184.216.34", "10.0.0.7"],
                                                  "imds.example.com": ["169.254.169.254"],
                                                  "ok.example.com": ["93.184.216.34"]}))
    with pytest.raises(UnsafeWebhookTarget, match="private"):
        resolve_target("https://hooks.example.com/x", options)
    with pytest.raises(UnsafeWebhookTarget, match="link-local"):
        resolve_target("https://imds.example.com/x", options)
    target = resolve_target("https://ok.example.com:8443/x?y=1", options)
    assert (target.host, target.port, target.path, target.address) == ("ok.example.com", 8443, "/x?y=1",
                                                                       "93.184.216.34")


@pytest.mark.parametrize("url", ["http://hooks.example.com/", "http://127.0.0.1:9/", "https://u:p@ok.example.com/",
                                 "https://ok.example.com/#frag", "https:///nohost", "gopher://ok.example.com/",
                                 "https://ok.example.com/a b", "https://ok.example.com/\u00e9", "https://h\u00e9.test/"])
def test_url_rules(url: str) -> None:
    options = DeliveryOptions(resolver=_resolver({"ok.example.com": ["93.184.216.34"]}))
    with pytest.raises(UnsafeWebhookTarget):
        resolve_target(url, options)


def test_plain_http_only_to_loopback_in_local_mode() -> None:
    local = DeliveryOptions(local_mode=True, resolver=_resolver({"localhost": ["127.0.0.1"],
                                                                 "rebound.test": ["127.0.0.1"]}))
    assert resolve_target("http://localhost:8080/h", local).address == "127.0.0.1"
    with pytest.raises(UnsafeWebhookTarget):
        resolve_target("http://rebound.test/h", local)  # a name that is not loopback by itself


# --- attempts against a real receiver ----------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    cert, key = make_self_signed(tmp_path)
    served = WebhookReceiver(cert, key, secret="whsec_test")
    yield served
    served.close()


def test_the_request_goes_to_the_checked_address_without_a_second_lookup(receiver: WebhookReceiver) -> None:
    # hooks.test exists in no DNS: only a connection pinned to the address the guard checked reaches it,
    # and the certificate is still checked against the name (SNI and Host carry it).
    resolver = _resolver({"hooks.test": ["127.0.0.1"]})
    options = DeliveryOptions(local_mode=True, ca_file=str(receiver.cert_path), resolver=resolver)
    result = post_signed(receiver.url("hooks.test"), "whsec_test", "evt_pin", '{"x":1}', options)
    assert result == AttemptResult(200, "")
    assert resolver.calls == ["hooks.test"]
    [request] = receiver.received
    assert request.verified and request.headers["Host"] == f"hooks.test:{receiver.port}"


def test_an_untrusted_certificate_fails_the_attempt(receiver: WebhookReceiver) -> None:
    result = post_signed(receiver.url(), "whsec_test", "evt_x", "{}", DeliveryOptions(local_mode=True))
    assert result.status_code is None and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert receiver.received == []


def test_a_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    receiver.script = [302]
    result = post_signed(receiver.url(), "whsec_test", "evt_r", "{}",
                         DeliveryOptions(local_mode=True, ca_file=str(receiver.cert_path)))
    assert result.status_code == 302 and not result.ok and "redirect" in result.error
    assert len(receiver.received) == 1  # the Location (the metadata service) was never asked


def test_loopback_is_refused_outside_local_mode_at_attempt_time(receiver: WebhookReceiver) -> None:
    result = post_signed(receiver.url(), "whsec_test", "evt_l", "{}",
                         DeliveryOptions(local_mode=False, ca_file=str(receiver.cert_path)))
    assert result.status_code is None and "loopback" in result.error
    assert receiver.received == []


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_attempt_deadline() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:  # one byte well inside every read timeout
                if stop.wait(0.2):
                    return
                connection.sendall(bytes([byte]))

    threading.Thread(target=drip, daemon=True).start()
    options = DeliveryOptions(local_mode=True, read_timeout=1.0, total_timeout=1.5)
    started = time.monotonic()
    try:
        result = post_signed(f"http://127.0.0.1:{listener.getsockname()[1]}/h", "whsec_x", "evt_slow", "{}", options)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 5
    assert result.status_code is None and "longer than 1.5 s" in result.error


# --- retries until the dead letter ---------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteControlStore]:
    opened = SqliteControlStore(tmp_path / "control.sqlite3")
    yield opened
    opened.close()


def _endpoint(store: SqliteControlStore, keys: LocalKeyFile, url: str, secret: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        endpoint_id="whk_1", org_id="org_1", url=url, events=("key.revoked", "audit.chain_broken"),
        secret_sealed=secret_sealer(keys).seal("whk_1", secret), created_at=utc_now(), created_by="usr_1",
    )
    store.put_webhook_endpoint(endpoint)
    return endpoint


def test_failures_back_off_with_full_jitter_for_24_hours_then_fail(store: SqliteControlStore, tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "keys.json")
    _endpoint(store, keys, "https://hooks.example.com/", new_secret())
    clock = HandWoundClock(datetime(2026, 5, 1, tzinfo=UTC))
    event_id = emit(store, "org_1", "key.revoked", {"key_id": "k"}, now=clock())
    sent: list[datetime] = []

    def always_down(*args: Any, **kwargs: Any) -> AttemptResult:
        sent.append(clock())
        return AttemptResult(503, "the receiver answered 503")

    waits: list[float] = []
    rng = random.Random(5)
    while True:
        delivery = store.get_webhook_delivery("whk_1", event_id)
        assert delivery is not None
        if delivery.status is not DeliveryStatus.PENDING:
            break
        assert delivery.next_attempt_at is not None
        clock.at = delivery.next_attempt_at
        after = deliver(store, secret_sealer(keys), "whk_1", event_id, clock=clock, rng=rng, send=always_down)
        assert after is not None
        if after.next_attempt_at is not None:
            waits.append((after.next_attempt_at - clock.at).total_seconds())
            ceiling = backoff_ceiling(after.attempt)
            deadline_left = (delivery.created_at + RETRY_WINDOW - clock.at).total_seconds()
            assert 0 <= waits[-1] <= min(ceiling, deadline_left)
        assert after.attempt < 500
    assert delivery.status is DeliveryStatus.FAILED and delivery.next_attempt_at is None
    assert delivery.error == "the receiver answered 503" and delivery.status_code == 503
    assert sent[-1] == delivery.created_at + RETRY_WINDOW  # the last attempt is at the end of the window
    assert len(sent) == delivery.attempt > 20
    assert max(waits) > 1800  # the ceiling grew to the one-hour cap
    assert store.due_webhook_deliveries(clock.at + timedelta(days=7)) == []


def test_emitting_an_event_id_twice_records_and_sends_it_once(store: SqliteControlStore, tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "keys.json")
    _endpoint(store, keys, "https://hooks.example.com/", new_secret())
    dispatched: list[int] = []
    previous = set_dispatcher(lambda deliveries: dispatched.append(len(deliveries)))
    try:
        first = emit(store, "org_1", "key.revoked", {"n": 1}, event_id="evt_once")
        again = emit(store, "org_1", "key.revoked", {"n": 1}, event_id="evt_once")
        emit(store, "org_1", "policy.changed", {"n": 2})  # not subscribed
        emit(store, "org_2", "key.revoked", {"n": 3})  # another organisation
    finally:
        set_dispatcher(previous)
    assert first == again == "evt_once"
    assert [d.event_id for d in store.list_webhook_deliveries("whk_1")] == ["evt_once"]
    assert dispatched == [1]


def test_the_local_delivery_thread_sends_a_new_event_at_once(
    store: SqliteControlStore, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    keys = LocalKeyFile(tmp_path / "keys.json")
    _endpoint(store, keys, receiver.url(), receiver.secret)
    options = DeliveryOptions(local_mode=True, ca_file=str(receiver.cert_path))
    worker = LocalDeliveryWorker(store, secret_sealer(keys), interval=60.0, options=options).start()
    previous = set_dispatcher(worker.wake)
    try:
        event_id = emit(store, "org_1", "audit.chain_broken", {"chain_id": "org_1", "at_seq": 7})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not receiver.received:
            time.sleep(0.02)
    finally:
        set_dispatcher(previous)
        worker.stop()
    [request] = receiver.received
    assert request.verified and request.headers["Hd-Webhook-Id"] == event_id
    assert json.loads(request.body)["data"] == {"chain_id": "org_1", "at_seq": 7}
    delivered = store.get_webhook_delivery("whk_1", event_id)
    assert delivered is not None and delivered.status is DeliveryStatus.DELIVERED


# --- the AWS path: SQS and the delivery Lambda ----------------------------------------------------


class _SpyingSqs:
    """The moto SQS client, with every send kept for the test to read (moto holds delayed messages back)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.sends: list[dict[str, Any]] = []

    def send_message(self, **kwargs: Any) -> Any:
        self.sends.append(kwargs)
        return self._client.send_message(**kwargs)

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.sends.extend({"MessageBody": entry["MessageBody"], "DelaySeconds": 0} for entry in kwargs["Entries"])
        return self._client.send_message_batch(**kwargs)


def test_the_sqs_delivery_lambda_delivers_retries_through_the_queue_and_sweeps(
    aws_credentials: None, store: SqliteControlStore, tmp_path: Path, receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions.shared.wiring import install_services
    from functions.webhooks import delivery as delivery_function
    from hd_core.webhook_sqs import SqsWebhookQueue, queue_from_environment

    keys = LocalKeyFile(tmp_path / "keys.json")
    _endpoint(store, keys, receiver.url(), receiver.secret)
    receiver.script = [500]
    options = DeliveryOptions(local_mode=True, ca_file=str(receiver.cert_path))

    class _Services:  # what the delivery function reads of ControlServices
        def __init__(self) -> None:
            self.store = store
            self.keys = keys

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="hd-webhooks")["QueueUrl"]
        monkeypatch.setenv("HD_WEBHOOK_QUEUE_URL", queue_url)
        assert isinstance(queue_from_environment(), SqsWebhookQueue)
        spy = _SpyingSqs(sqs)
        queue = SqsWebhookQueue(spy, queue_url)
        install_services(_Services())  # type: ignore[arg-type]
        previous = set_dispatcher(queue)
        try:
            event_id = emit(store, "org_1", "key.revoked", {"key_id": "k1"})
            messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
            assert [json.loads(m["Body"]) for m in messages] == [{"endpoint_id": "whk_1", "event_id": event_id}]
            records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]
            records.append({"messageId": "junk", "body": "not json"})
            clock = HandWoundClock(utc_now())
            answer = delivery_function.handle_event({"Records": records}, queue=queue, clock=clock, options=options)
            assert answer == {"batchItemFailures": []}
            # The first attempt failed: the delivery went back on the queue, delayed to its next attempt.
            pending = store.get_webhook_delivery("whk_1", event_id)
            assert pending is not None and pending.status is DeliveryStatus.PENDING and pending.attempt == 1
            assert pending.next_attempt_at is not None
            requeued = spy.sends[-1]
            assert json.loads(requeued["MessageBody"]) == {"endpoint_id": "whk_1", "event_id": event_id}
            wait = (pending.next_attempt_at - clock.at).total_seconds()
            assert requeued["DelaySeconds"] in (int(wait), int(wait) + 1) and 0 <= requeued["DelaySeconds"] <= 15
            # The message comes back at its time; the second attempt delivers.
            clock.at = pending.next_attempt_at
            again = [{"messageId": "m2", "body": requeued["MessageBody"]}]
            assert delivery_function.handle_event({"Records": again}, queue=queue, clock=clock,
                                                  options=options) == {"batchItemFailures": []}
            done = store.get_webhook_delivery("whk_1", event_id)
            assert done is not None and done.status is DeliveryStatus.DELIVERED and done.attempt == 2
            assert [r.status for r in receiver.received] == [500, 200] and all(r.verified for r in receiver.received)
            sends = len(spy.sends)
            # An early or duplicated message sends nothing; a delivery still waiting is re-enqueued for the rest.
            assert delivery_function.handle_event({"Records": again}, queue=queue, clock=clock,
                                                  options=options) == {"batchItemFailures": []}
            assert len(receiver.received) == 2 and len(spy.sends) == sends
            # The scheduled sweep re-enqueues due deliveries whose message was lost.
            set_dispatcher(None)
            lost = emit(store, "org_1", "key.revoked", {"key_id": "k2"})
            assert delivery_function.handle_event({}, queue=queue, clock=lambda: utc_now() + timedelta(seconds=1)) \
                == {"requeued": 1}
            assert json.loads(spy.sends[-1]["MessageBody"])["event_id"] == lost
        finally:
            set_dispatcher(previous)
            install_services(None)


def test_a_long_wait_is_split_into_sqs_delays_of_at_most_15_minutes() -> None:
    from hd_core.webhook_sqs import delay_until

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert delay_until(now + timedelta(hours=1), now) == 900
    assert delay_until(now + timedelta(seconds=12.2), now) == 13
    assert delay_until(now - timedelta(seconds=5), now) == 0
    assert delay_until(None, now) == 0
