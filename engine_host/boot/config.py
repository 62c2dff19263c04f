"""The engine host's provisioned configuration, written by the deployment as an SSM parameter or a JSON file.

`hd engine boot` and `hd engine serve` read the same `EngineConfig`. Identifiers are checked by shape
only (a misspelt VPC id should fail here, with the field named, not later as a confusing mismatch);
whether they are the right ones is the environment binding's job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from hd_core.errors import HdError, InvalidRequest
from hd_core.telemetry import OTEL_ENDPOINT_ENV, TelemetryMisconfigured, traces_url
from hd_core.wipe import DEFAULT_DEVICE, luks_erase_commands

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_ACCOUNT = re.compile(r"^\d{12}$")
_VPC = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SECURITY_GROUP = re.compile(r"^sg-[0-9a-f]{8,17}$")
# Key ARNs only: an alias can be moved to another key, which would silently rebind the cache.
_KMS_KEY_ARN = re.compile(r"^arn:aws[-a-z]*:kms:[a-z]{2}(-[a-z]+)+-\d{1,2}:\d{12}:key/[A-Za-z0-9-]{1,128}$")
_SECRET_ARN = re.compile(
    r"^arn:aws[-a-z]*:secretsmanager:[a-z]{2}(-[a-z]+)+-\d{1,2}:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TABLE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
# Device-mapper names become /dev/mapper/<name>: no slashes, nothing a path or a shell could misread.
_MAPPER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ORG_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ASG_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,255}$")
_MAX_ERRORS_REPORTED = 5


class EngineConfigInvalid(HdError):
    """The provisioned engine configuration is missing, unreadable or has a bad field (named in `field`)."""

    code = "HD_ERR_ENGINE_CONFIG_INVALID"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _matching(pattern: re.Pattern[str], shape: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must look like {shape}")
        return value

    return AfterValidator(check)


def _absolute_path(value: Path) -> Path:
    if not value.is_absolute() or ".." in value.parts:
        raise ValueError("must be an absolute path without '..'")
    return value


def _prefix(value: str) -> str:
    if value and (not value.endswith("/") or value.startswith("/")):
        raise ValueError("must be empty or a key prefix like 'tables/' (no leading '/', ending in '/')")
    return value


def _device(value: str) -> str:
    # The termination wipe must be able to name the device we encrypt, so its rule is ours.
    try:
        luks_erase_commands(value)
    except InvalidRequest as exc:
        raise ValueError(str(exc)) from exc
    return value


def _otlp_url(value: str | None) -> str | None:
    if value is not None:
        try:
            traces_url({OTEL_ENDPOINT_ENV: value})
        except TelemetryMisconfigured:
            raise ValueError("must be an OTLP/HTTP collector URL like http://10.0.0.5:4318 "
                             "(http or https, no credentials, query or fragment)") from None
    return value


def _https_url(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
        raise ValueError("must be an https:// URL (the heartbeat carries the environment fingerprint)")
    return value


Region = Annotated[str, _matching(_REGION, "eu-west-1")]
KmsKeyArn = Annotated[str, _matching(_KMS_KEY_ARN, "arn:aws:kms:<region>:<account>:key/<key id>")]
SecretArn = Annotated[str, _matching(_SECRET_ARN, "arn:aws:secretsmanager:<region>:<account>:secret:<name>")]
Bucket = Annotated[str, _matching(_BUCKET, "an S3 bucket name")]
AbsolutePath = Annotated[Path, AfterValidator(_absolute_path)]
KeyPrefix = Annotated[str, AfterValidator(_prefix)]
Port = Annotated[int, Field(ge=1, le=65535)]


class EngineConfig(BaseModel):
    """Everything the deployment decided for this engine host; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    org_id: Annotated[str, _matching(_ORG_ID, "an organisation id (letters, digits, '-', '_')")]
    account_id: Annotated[str, _matching(_ACCOUNT, "a 12-digit AWS account id")]
    region: Region
    vpc_id: Annotated[str, _matching(_VPC, "vpc-0123456789abcdef0")]
    security_group_ids: Annotated[list[Annotated[str, _matching(_SECURITY_GROUP, "sg-0123456789abcdef0")]],
                                  Field(min_length=1)]
    kms_key_arn: KmsKeyArn

    cache_device: Annotated[str, AfterValidator(_device)] = DEFAULT_DEVICE
    cache_mapper_name: Annotated[str, _matching(_MAPPER_NAME, "a device-mapper name like hd-cache")] = "hd-cache"
    cache_mount: AbsolutePath = Path("/var/lib/hd/cache")
    cache_key_file: AbsolutePath = Path("/var/lib/hd/cache-key.json")
    state_dir: AbsolutePath = Path("/var/lib/hd/state")
    cache_capacity_bytes: Annotated[int, Field(gt=0)] | None = None  # None: the mounted filesystem's size
    # DuckDB's memory limit (None: half the instance's memory), where it spills (None: the cache
    # volume's duckdb-tmp), and the largest result and single value a statement may return (0: no cap).
    memory_limit_bytes: Annotated[int, Field(gt=0)] | None = None
    # Concurrency; None: derived from the instance's vCPUs and memory (engine_host/boot/sizing.py, README table).
    max_concurrent_statements: Annotated[int, Field(ge=1, le=10_000)] | None = None
    max_queued_statements: Annotated[int, Field(ge=0, le=100_000)] | None = None
    worker_threads: Annotated[int, Field(ge=1, le=10_000)] | None = None
    duckdb_threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    temp_directory: AbsolutePath | None = None
    max_result_bytes: Annotated[int, Field(ge=0)] = 1 << 30
    max_value_bytes: Annotated[int, Field(ge=0)] = 256 << 20

    data_bucket: Bucket
    data_prefix: KeyPrefix = ""
    audit_bucket: Bucket  # query audit under audit/queries/, IAM checkpoints under audit/iam-checkpoints/
    control_table: Annotated[str, _matching(_TABLE, "a DynamoDB table name")]
    signing_key_arn: KmsKeyArn
    checkpoint_key_arn: KmsKeyArn

    control_api_url: Annotated[str | None, AfterValidator(_https_url)] = None
    # The control API's JWT issuer and audience (its HD_JWT_ISSUER / HD_JWT_AUDIENCE): the host
    # accepts a control-API JWT as a Postgres password only if both match.
    jwt_issuer: str = "https://hardened-duck.local"
    jwt_audience: str = "hardened-duck"
    # Shorter than the four-hour grace period, or one missed answer would already end service.
    heartbeat_interval_seconds: Annotated[int, Field(ge=1, lt=4 * 3600)] = 900
    # Where statement spans go (engine_host/ops/tracing.py), ahead of HD_OTEL_ENDPOINT; None: that variable or off.
    otel_endpoint: Annotated[str | None, AfterValidator(_otlp_url)] = None

    # The fleet's Auto Scaling group: the one dimension of the CloudWatch metrics the host publishes (scaling,
    # alarms) and the group whose scale-in protection it sets while it holds sessions. None: neither.
    auto_scaling_group_name: Annotated[str, _matching(_ASG_NAME, "an Auto Scaling group name")] | None = None
    # How long a draining host (termination, Spot interruption, `systemctl stop`) lets running statements finish
    # before interrupting them; the wipe hook's heartbeat timeout must exceed it.
    drain_grace_seconds: Annotated[int, Field(ge=1, le=3600)] = 90

    listen_host: str = "0.0.0.0"  # noqa: S104 - the engine serves clients in the VPC; security groups fence it
    listen_port: Port = 5439
    metrics_host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes from inside the VPC
    metrics_port: Port = 9090
    tls_cert_file: AbsolutePath = Path("/etc/hardened-duck/tls/server.crt")
    tls_key_file: AbsolutePath = Path("/etc/hardened-duck/tls/server.key")
    # Secrets Manager secret {"certificate", "private_key"} that boot installs at the two paths above
    # (see engine_host/boot/tls_material.py); None: a self-signed certificate.
    tls_secret_arn: SecretArn | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EngineConfig:
        if len(set(self.security_group_ids)) != len(self.security_group_ids):
            raise ValueError("security_group_ids: lists a security group twice")
        # The ciphertext data key must outlive the instance-store cache (stop/start blanks it) and must
        # never sit beside the data it protects.
        if PurePosixPath(self.cache_key_file).is_relative_to(PurePosixPath(self.cache_mount)):
            raise ValueError("cache_key_file: must not be on the cache volume (cache_mount)")
        if (self.worker_threads is not None and self.max_concurrent_statements is not None
                and self.worker_threads < self.max_concurrent_statements):
            raise ValueError("worker_threads: must be at least max_concurrent_statements")
        if self.listen_port == self.metrics_port:
            raise ValueError("metrics_port: must differ from listen_port")
        return self


def parse_config(data: object, source: str) -> EngineConfig:
    """`data` (decoded JSON) as an `EngineConfig`; raises `EngineConfigInvalid` naming the bad fields."""
    if not isinstance(data, dict):
        raise EngineConfigInvalid(f"engine configuration {source} must be a JSON object")
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, source) from None


def load_config_file(path: Path | str) -> EngineConfig:
    """The configuration in the JSON file at `path`; raises `EngineConfigInvalid`."""
    source = f"file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineConfigInvalid(f"cannot read engine configuration {source}: {exc}") from None
    return parse_config(_json(text, source), source)


def load_config_from_ssm(ssm_client: Any, name: str) -> EngineConfig:
    """The configuration in SSM parameter `name` (a JSON string); raises `EngineConfigInvalid`."""
    source = f"SSM parameter {name}"
    try:
        response = ssm_client.get_parameter(Name=name, WithDecryption=True)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise EngineConfigInvalid(
            f"cannot read engine configuration {source} ({code}): check the parameter name, the region "
            "and that this instance's role may ssm:GetParameter it"
        ) from None
    except BotoCoreError as exc:
        raise EngineConfigInvalid(
            f"cannot reach SSM for engine configuration {source} ({exc}): check the SSM VPC endpoint and region"
        ) from None
    return parse_config(_json(response["Parameter"]["Value"], source), source)


def _json(text: str, source: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineConfigInvalid(
            f"engine configuration {source} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _invalid(exc: ValidationError, source: str) -> EngineConfigInvalid:
    """One line naming each bad field and what it must be, never echoing the values."""
    problems: list[str] = []
    fields: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a known setting"
        if not field and ": " in message:  # a cross-field rule names its field itself
            field, _, message = message.partition(": ")
        fields.append(field)
        problems.append(f"{field}: {message}")
    shown = "; ".join(problems[:_MAX_ERRORS_REPORTED])
    if len(problems) > _MAX_ERRORS_REPORTED:
        shown += f"; and {len(problems) - _MAX_ERRORS_REPORTED} more"
    return EngineConfigInvalid(
        f"engine configuration {source} is invalid: {shown}", field=fields[0] if fields else None
    )
