"""Sending webhook deliveries: the SSRF guard, one signed attempt, retries with backoff for 24 hours.

`deliver(...)` runs one attempt of one recorded delivery; whatever runs it (the SQS-fed Lambda in AWS,
the delivery thread of `hd dev`) calls the same function. An attempt is claimed in the store first
(its attempt counter moves on conditionally, with a short lease as its next attempt time), so of two
workers only one sends, and a worker that dies mid-attempt leaves the delivery due again once the
lease passes. A 2xx answer delivers it; anything else schedules the next attempt after an
exponential backoff with full jitter (a uniformly random delay in [0, min(cap, base·2^(n-1))]), until
24 hours after the event: then the delivery is `failed` (the dead letter, kept in the delivery log).

The SSRF guard: only `https` URLs (plain `http` to a loopback host in local mode only); the host is
resolved once and every address it resolves to must be public (no private, loopback except in local
mode, link-local incl. 169.254.169.254, multicast, reserved, unspecified, shared or documentation
ranges, IPv6 ULA/link-local/site-local, nor any of these inside IPv4-mapped, 6to4 or Teredo IPv6);
the connection goes to the address that was checked (no second resolution a DNS rebinding could
answer differently) with the host name kept for SNI, certificate checking and `Host`; redirects are
not followed (a 3xx is a failed attempt); timeouts are short (5 s to connect, 10 s per read, 15 s for
the whole attempt) and at most 64 KiB of an answer is read.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from hd_core.errors import Conflict, InvalidRequest, KeyUnavailable
from hd_core.models import utc_now
from hd_core.ports import ControlStore
from hd_core.sealed_secrets import SecretSealer
from hd_core.webhook_models import DeliveryStatus, WebhookDelivery
from hd_core.webhooks import signed_headers

_log = logging.getLogger(__name__)

RETRY_WINDOW = timedelta(hours=24)
BACKOFF_BASE_SECONDS = 15.0
BACKOFF_CAP_SECONDS = 3600.0
CLAIM_LEASE = timedelta(seconds=120)  # an attempt's worker that vanished is retried after this
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
TOTAL_TIMEOUT_SECONDS = 15.0
MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_CHARS = 500
USER_AGENT = "HardenedDuck-Webhooks/1"

Resolver = Callable[[str, int], Sequence[str]]


class UnsafeWebhookTarget(InvalidRequest):
    """A webhook URL or the address its host resolves to is not one Hardened Duck sends requests to."""

    code = "HD_ERR_WEBHOOK_TARGET_REFUSED"


@dataclass(frozen=True)
class DeliveryOptions:
    """How attempts are made: local mode (http and loopback allowed), a test CA file, the resolver, timeouts."""

    local_mode: bool = False
    ca_file: str | None = None  # tests only: a CA bundle trusted instead of the system's (never verify=False)
    resolver: Resolver | None = None  # None: the system resolver (getaddrinfo)
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    read_timeout: float = READ_TIMEOUT_SECONDS  # per socket operation
    total_timeout: float = TOTAL_TIMEOUT_SECONDS  # the whole attempt: a receiver dripping bytes is cut off


_default_options = DeliveryOptions()


def set_default_options(options: DeliveryOptions) -> DeliveryOptions:
    """Set this process's delivery options (`hd dev` turns local mode on); returns the previous ones."""
    global _default_options
    previous, _default_options = _default_options, options
    return previous


def default_options() -> DeliveryOptions:
    """This process's delivery options: what creation checks URLs with and attempts use unless given others."""
    return _default_options


# --- the SSRF guard ---------------------------------------------------------------------------

_BLOCKED_NETWORKS = tuple(ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10",
    "ff00::/8",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(address: str, *, allow_loopback: bool = False) -> str | None:
    """Why no request may go to `address` (an IP literal), or None if it is a public unicast address.

    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4, Teredo) are judged by that address too.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            candidates = [ip.ipv4_mapped]  # the IPv4 address it is, whatever ::ffff:0:0/96 counts as
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if ip.teredo is not None:
            candidates.extend(ip.teredo)
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    for candidate in candidates:
        if allow_loopback and candidate.is_loopback:
            continue
        if candidate.is_loopback:
            return f"{address} is a loopback address"
        if candidate.is_link_local:
            return f"{address} is link-local (cloud metadata lives there)"
        if candidate.is_multicast:
            return f"{address} is a multicast address"
        blocked = any(candidate in net for net in _BLOCKED_NETWORKS if net.version == candidate.version)
        if candidate.is_private or blocked:
            return f"{address} is a private, reserved or special-purpose address"
        if candidate.is_reserved or candidate.is_unspecified or not candidate.is_global:
            return f"{address} is not a public address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (TCP), as text; raises `UnsafeWebhookTarget` if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnsafeWebhookTarget(f"the webhook host {host!r} does not resolve ({error})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class CheckedTarget:
    """A webhook URL taken apart, with the one address its request may go to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def check_url(url: str, *, local_mode: bool = False) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an acceptable webhook URL; raises `UnsafeWebhookTarget` otherwise.

    Only the syntax and scheme: `resolve_target` checks the addresses (at creation and at every attempt).
    """
    if not isinstance(url, str) or len(url) > 2048 or any(not 33 <= ord(char) <= 126 for char in url):
        raise UnsafeWebhookTarget("a webhook URL is at most 2048 printable ASCII characters without spaces "
                                  "(an international host name in its xn-- form)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeWebhookTarget(f"the webhook URL is malformed ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeWebhookTarget("a webhook URL must use https")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookTarget("a webhook URL must not carry credentials; the signature authenticates requests")
    host = parts.hostname
    if not host:
        raise UnsafeWebhookTarget("a webhook URL needs a host")
    if parts.fragment:
        raise UnsafeWebhookTarget("a webhook URL has no fragment")
    if scheme == "http" and not (local_mode and _is_loopback_name(host)):
        raise UnsafeWebhookTarget("a webhook URL must use https (plain http only to a loopback host in hd dev)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve_target(url: str, options: DeliveryOptions) -> CheckedTarget:
    """Check `url` and the addresses its host resolves to; the first address, which the request then uses.

    Every address must pass (a name that also resolves to a private address is refused outright).
    """
    scheme, host, port, path = check_url(url, local_mode=options.local_mode)
    resolver = options.resolver or system_resolver
    addresses = list(resolver(host, port))
    if not addresses:
        raise UnsafeWebhookTarget(f"the webhook host {host!r} does not resolve")
    for address in addresses:
        reason = address_refusal(address, allow_loopback=options.local_mode)
        if reason is not None:
            raise UnsafeWebhookTarget(f"webhook host {host!r} refused: {reason}")
        if scheme == "http" and not ipaddress.ip_address(address.split("%", 1)[0]).is_loopback:
            raise UnsafeWebhookTarget("plain http webhooks may only go to a loopback address")
    return CheckedTarget(scheme, host, port, path, addresses[0])


def _is_loopback_name(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- one HTTP request to a checked address ----------------------------------------------------


class _PinnedHttpsConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed IP address, with the URL's host name for SNI, certificate checking and `Host`."""

    def __init__(self, host: str, port: int, address: str, *, context: ssl.SSLContext, connect_timeout: float,
                 read_timeout: float) -> None:
        super().__init__(host, port, timeout=read_timeout, context=context)
        self._address = address
        self._connect_timeout = connect_timeout
        self._context = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), timeout=self._connect_timeout)
        raw.settimeout(self.timeout)
        try:
            self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


class _PinnedHttpConnection(http.client.HTTPConnection):
    """Plain HTTP to a fixed (loopback) address: local mode only."""

    def __init__(self, host: str, port: int, address: str, *, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(host, port, timeout=read_timeout)
        self._address = address
        self._connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), timeout=self._connect_timeout)
        self.sock.settimeout(self.timeout)


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt got: the status code (None when no answer came) and an error text (empty on success)."""

    status_code: int | None
    error: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post_signed(url: str, secret: str, event_id: str, body: str, options: DeliveryOptions, *,
                timestamp: int | None = None) -> AttemptResult:
    """POST `body` to `url` signed with `secret`, through the SSRF guard; never raises for a network failure."""
    try:
        target = resolve_target(url, options)
    except UnsafeWebhookTarget as error:
        return AttemptResult(None, str(error))
    headers = signed_headers(secret, event_id, int(time.time()) if timestamp is None else timestamp, body)
    headers["User-Agent"] = USER_AGENT
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        context = ssl.create_default_context(cafile=options.ca_file)
        connection = _PinnedHttpsConnection(target.host, target.port, target.address, context=context,
                                            connect_timeout=options.connect_timeout,
                                            read_timeout=options.read_timeout)
    else:
        connection = _PinnedHttpConnection(target.host, target.port, target.address,
                                           connect_timeout=options.connect_timeout, read_timeout=options.read_timeout)
    # Per-operation timeouts do not bound a receiver that sends one byte just inside each: past the
    # attempt's deadline the watchdog shuts the socket, and whatever is blocked in it returns.
    cut_off = threading.Event()
    watchdog = threading.Timer(options.total_timeout, _cut_off, args=(connection, cut_off))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("POST", target.path, body=body.encode("utf-8"), headers=headers)
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)  # drained up to the cap, never kept
        status = response.status
    except (OSError, http.client.HTTPException, ssl.SSLError) as error:
        if cut_off.is_set():
            return AttemptResult(None, f"the receiver took longer than {options.total_timeout:g} s")
        return AttemptResult(None, f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS])
    finally:
        watchdog.cancel()
        connection.close()
    if 200 <= status < 300:
        return AttemptResult(status, "")
    if 300 <= status < 400:
        return AttemptResult(status, "the receiver answered with a redirect, which is not followed")
    return AttemptResult(status, f"the receiver answered {status}")


def _cut_off(connection: http.client.HTTPConnection, cut_off: threading.Event) -> None:
    cut_off.set()
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


# --- retries ------------------------------------------------------------------------------


def backoff_ceiling(attempt: int) -> float:
    """The longest wait after failed attempt number `attempt` (1-based): min(cap, base·2^(attempt-1)) seconds."""
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** max(0, attempt - 1))


def backoff_delay(attempt: int, rng: random.Random | None = None) -> timedelta:
    """The wait after failed attempt `attempt`: full jitter, uniformly random in [0, backoff_ceiling(attempt)]."""
    return timedelta(seconds=(rng or _RANDOM).uniform(0.0, backoff_ceiling(attempt)))


_RANDOM = random.SystemRandom()


def deliver(
    store: ControlStore,
    sealer: SecretSealer,
    endpoint_id: str,
    event_id: str,
    *,
    options: DeliveryOptions | None = None,
    clock: Callable[[], datetime] = utc_now,
    rng: random.Random | None = None,
    send: Callable[..., AttemptResult] = post_signed,
) -> WebhookDelivery | None:
    """Make the next attempt of one delivery if it is due; returns the delivery as stored afterwards.

    Returns the stored delivery unchanged when it is not pending or not yet due, None when it does
    not exist or another worker claimed this attempt first.
    """
    opts = options or _default_options
    delivery = store.get_webhook_delivery(endpoint_id, event_id)
    now = clock()
    if delivery is None or delivery.status is not DeliveryStatus.PENDING:
        return delivery
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return delivery
    claimed = replace(delivery, attempt=delivery.attempt + 1, last_attempt_at=now, next_attempt_at=now + CLAIM_LEASE)
    try:
        store.update_webhook_delivery(claimed, from_attempt=delivery.attempt)
    except Conflict:
        return None
    endpoint = store.get_webhook_endpoint(endpoint_id)
    if endpoint is None or endpoint.disabled:
        result = AttemptResult(None, "the endpoint was deleted")
        final = True
    else:
        try:
            secret = sealer.unseal(endpoint.endpoint_id, endpoint.secret_sealed)
        except KeyUnavailable as error:
            result, final = AttemptResult(None, f"the endpoint secret is unavailable: {error}"), False
        else:
            result = send(endpoint.url, secret, delivery.event_id, delivery.body, opts,
                          timestamp=int(clock().timestamp()))
            final = False
    finished = clock()
    if result.ok:
        outcome = replace(claimed, status=DeliveryStatus.DELIVERED, status_code=result.status_code, error="",
                          next_attempt_at=None, delivered_at=finished)
    elif final or finished >= delivery.created_at + RETRY_WINDOW:
        outcome = replace(claimed, status=DeliveryStatus.FAILED, status_code=result.status_code,
                          error=result.error[:MAX_ERROR_CHARS], next_attempt_at=None)
    else:
        next_at = min(finished + backoff_delay(claimed.attempt, rng), delivery.created_at + RETRY_WINDOW)
        outcome = replace(claimed, status_code=result.status_code, error=result.error[:MAX_ERROR_CHARS],
                          next_attempt_at=next_at)
    try:
        store.update_webhook_delivery(outcome, from_attempt=claimed.attempt)
    except Conflict:  # the lease ran out and another worker moved on: its record stands
        _log.warning("webhook delivery %s/%s outlived its lease", endpoint_id, event_id)
        return store.get_webhook_delivery(endpoint_id, event_id)
    if outcome.status is DeliveryStatus.FAILED:
        _log.warning("webhook delivery %s to %s failed for good after %d attempts: %s", event_id, endpoint_id,
                     outcome.attempt, outcome.error)
    return outcome


def deliver_due(store: ControlStore, sealer: SecretSealer, *, limit: int = 100, **kwargs: Any) -> int:
    """One attempt of every delivery due now (at most `limit`); returns how many were attempted."""
    clock: Callable[[], datetime] = kwargs.get("clock", utc_now)
    attempted = 0
    for delivery in store.due_webhook_deliveries(clock(), limit):
        if deliver(store, sealer, delivery.endpoint_id, delivery.event_id, **kwargs) is not None:
            attempted += 1
    return attempted


class LocalDeliveryWorker:
    """`hd dev`'s delivery loop: a daemon thread running `deliver_due` every `interval` seconds, or sooner when woken.

    It is also the process's `webhooks` dispatcher (`wake`), so a new event goes out at once.
    """

    def __init__(self, store: ControlStore, sealer: SecretSealer, *, interval: float = 2.0, **kwargs: Any) -> None:
        self._store = store
        self._sealer = sealer
        self._interval = interval
        self._kwargs = kwargs
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hd-webhook-delivery", daemon=True)

    def start(self) -> LocalDeliveryWorker:
        self._thread.start()
        return self

    def wake(self, _deliveries: Sequence[WebhookDelivery] = ()) -> None:
        """Run a round now (the `webhooks.emit` dispatcher signature)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                deliver_due(self._store, self._sealer, **self._kwargs)
            except Exception:  # noqa: BLE001 - the loop outlives one bad round; the deliveries stay due
                _log.exception("webhook delivery round failed")
            self._wake.wait(self._interval)
