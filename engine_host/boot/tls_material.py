"""The engine's TLS certificate and key, from a Secrets Manager secret named by the provisioned configuration.

Postgres clients open TLS inside the protocol (SSLRequest first), which a TLS listener on a load
balancer cannot answer, so the load balancer passes TCP through and the engine terminates TLS 1.3
itself. For `sslmode=verify-full` the engine must then present a certificate for the name clients
connect to (the PrivateLink endpoint's DNS name or a private hosted zone record): the customer keeps
it in a secret `{"certificate": "<PEM chain>", "private_key": "<PEM key>"}`, and boot installs it.
Without a secret, `hd engine serve` falls back to a self-signed certificate (sslmode=require only).
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine_host.boot.config import EngineConfig
from engine_host.wire.tls import server_ssl_context
from hd_core.errors import HdError
from hd_core.files import write_file_atomically


class TlsMaterialInvalid(HdError):
    """The TLS secret is missing, unreadable, not the expected JSON, or its key does not match its certificate."""

    code = "HD_ERR_TLS_MATERIAL_INVALID"


def install_tls_material(config: EngineConfig, secrets: Any, log: logging.Logger) -> bool:
    """Write the secret's certificate (0644) and key (0600) where serve reads them; False when none is configured."""
    if config.tls_secret_arn is None:
        log.warning("no tls_secret_arn configured: the engine will present a self-signed certificate, so clients "
                    "can use sslmode=require but not verify-full")
        return False
    certificate, private_key = _read_secret(secrets, config.tls_secret_arn)
    cert_path, key_path = Path(config.tls_cert_file), Path(config.tls_key_file)
    for path in (cert_path, key_path):
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_file_atomically(key_path, private_key.encode("utf-8"), mode=0o600)
    write_file_atomically(cert_path, certificate.encode("utf-8"), mode=0o644)
    try:
        server_ssl_context(cert_path, key_path)  # the exact check serve will make: parses, and the key matches
    except (ssl.SSLError, ValueError) as exc:
        key_path.unlink(missing_ok=True)
        cert_path.unlink(missing_ok=True)
        raise TlsMaterialInvalid(f"the TLS secret {config.tls_secret_arn} does not hold a usable certificate and "
                                 f"matching private key ({exc}); fix the secret and boot again") from None
    log.info("installed the TLS certificate from %s at %s", config.tls_secret_arn, cert_path)
    return True


def _read_secret(secrets: Any, arn: str) -> tuple[str, str]:
    try:
        text = secrets.get_secret_value(SecretId=arn)["SecretString"]
    except (ClientError, BotoCoreError, KeyError) as exc:
        raise TlsMaterialInvalid(f"cannot read the TLS secret {arn}: {exc}; check that it exists and that the "
                                 "instance role may call secretsmanager:GetSecretValue on it") from None
    try:
        document = json.loads(text)
        certificate, private_key = document["certificate"], document["private_key"]
    except (ValueError, TypeError, KeyError):
        raise TlsMaterialInvalid(f"the TLS secret {arn} must be JSON with 'certificate' and 'private_key' "
                                 "(PEM strings)") from None
    if not isinstance(certificate, str) or not isinstance(private_key, str):
        raise TlsMaterialInvalid(f"the TLS secret {arn}: 'certificate' and 'private_key' must be PEM strings")
    return certificate, private_key
