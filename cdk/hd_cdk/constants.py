"""Names and numbers of the deployment, in one place: ports, compute tiers, retention, prefixes, context keys."""

from __future__ import annotations

from typing import Final

# --- ports -------------------------------------------------------------------------------------------
PGWIRE_PORT: Final = 5439  # PostgreSQL wire protocol (TLS), the only port agents reach
METRICS_PORT: Final = 9090  # Prometheus scrape, monitoring security group only
HTTPS_PORT: Final = 443  # AWS APIs through the VPC endpoints

# --- compute tiers (seed 003 "Compute Tiers": r6id, local NVMe for the DuckDB cache) --------------------
TIER_INSTANCE_TYPES: Final[dict[str, str]] = {
    "starter": "r6id.xlarge",
    "standard": "r6id.2xlarge",
    "performance": "r6id.4xlarge",
    "high_memory": "r6id.8xlarge",
}
DEFAULT_TIER: Final = "standard"
FLEET_MIN_DEFAULT: Final = 2  # two hosts: one per AZ
FLEET_MAX_DEFAULT: Final = 4
FLEET_SIZE_LIMIT: Final = 50

# --- audit retention ------------------------------------------------------------------------------------
AUDIT_RETENTION_YEARS: Final = 7  # Object Lock default retention on the audit bucket
AUDIT_GLACIER_AFTER_DAYS: Final = 90
AUDIT_DEEP_ARCHIVE_AFTER_DAYS: Final = 365
AUDIT_QUERIES_PREFIX: Final = "audit/queries/"
AUDIT_IAM_CHECKPOINTS_PREFIX: Final = "audit/iam-checkpoints/"
AUDIT_QUERY_CHECKPOINTS_PREFIX: Final = "audit/query-checkpoints/"  # hd_core.query_audit_chain.CHECKPOINT_PREFIX
AUDIT_EXPORTS_PREFIX: Final = "audit/exports/"  # hd_core.adapters.s3_audit_exports.EXPORTS_PREFIX

# --- network --------------------------------------------------------------------------------------------
VPC_CIDR: Final = "10.42.0.0/16"
# Fixed AZ suffixes, so synth never asks EC2 which zones exist (offline, deterministic).
AZ_SUFFIXES: Final[tuple[str, ...]] = ("a", "b")
# AWS-managed prefix lists of the S3 / DynamoDB gateway endpoints (IDs differ per region; CloudFormation cannot
# look them up). Other regions: set the context keys below from
# `aws ec2 describe-managed-prefix-lists --filters Name=prefix-list-name,Values=com.amazonaws.<region>.s3`.
S3_PREFIX_LISTS: Final[dict[str, str]] = {"eu-west-1": "pl-6da54004"}
DYNAMODB_PREFIX_LISTS: Final[dict[str, str]] = {"eu-west-1": "pl-6fa54006"}

# --- app context keys (cdk.json / build_app(context=...)) ---------------------------------------------
CONTEXT_ACCOUNT: Final = "hd:account"
CONTEXT_REGION: Final = "hd:region"
CONTEXT_BUNDLING: Final = "hd:bundling"
CONTEXT_APPROVED_CIDRS: Final = "hd:approvedCidrs"
CONTEXT_S3_PREFIX_LIST: Final = "hd:s3PrefixListId"
CONTEXT_DYNAMODB_PREFIX_LIST: Final = "hd:dynamodbPrefixListId"
DEFAULT_ACCOUNT: Final = "123456789012"
DEFAULT_REGION: Final = "eu-west-1"
STACK_NAME: Final = "HardenedDuck"

# --- engine fleet, wipe hook, monitoring (fleet helper's section) ----------------------------------------
ENGINE_CONFIG_PARAMETER_PREFIX: Final = "/hardened-duck"  # <prefix>/<stack name>/engine-config (README)
CACHE_DEVICE: Final = "/dev/nvme1n1"  # the r6id NVMe instance store: encrypted by boot, erased by the wipe hook
ROOT_VOLUME_GIB: Final = 30
ENGINE_INSTALL_DIR: Final = "/opt/hardened-duck"
WIPE_LIFECYCLE_HOOK_NAME: Final = "hd-cache-wipe"
# Long enough for one SSM drain and erase (the command timeout below + polling); the wipe Lambda heartbeats it.
WIPE_HEARTBEAT_TIMEOUT_SECONDS: Final = 300
# The erase command first stops the engine (its drain: up to ENGINE_STOP_TIMEOUT_SECONDS), then erases.
WIPE_COMMAND_TIMEOUT_SECONDS: Final = 210
WIPE_RETRY_ATTEMPTS: Final = 2
METRICS_NAMESPACE: Final = "HardenedDuck"  # functions/shared/lambda_entry.py METRICS_NAMESPACE
ALARM_PERIOD_MINUTES: Final = 5

# --- control API and Lambda packaging (control-API helper's section) -------------------------------------
CONTROL_API_STAGE: Final = "prod"
# Enhanced API Gateway security policy: TLS 1.3 only (legacy policies stop at a TLS 1.2 minimum).
CONTROL_API_TLS_POLICY: Final = "SecurityPolicy_TLS13_1_3_2025_09"
CONTROL_API_RATE_PER_SECOND: Final = 100  # stage-wide throttling
CONTROL_API_BURST: Final = 200
SIGN_IN_RATE_PER_SECOND: Final = 10  # password, refresh and federation routes: slows guessing
SIGN_IN_BURST: Final = 20
EXPIRED_KEY_SWEEP_MINUTES: Final = 60  # api_keys: records expired keys in the IAM trail
IAM_CHECKPOINT_MINUTES: Final = 15  # audit: signs every IAM chain's head (HD_CHECKPOINT_INTERVAL_MINUTES)
DEAD_LETTER_RETENTION_DAYS: Final = 14  # SQS maximum


# --- the composed stack (stack.py) ----------------------------------------------------------------------
# The control API's JWT issuer and audience, given to the control-plane Lambdas and to the engine hosts alike.
JWT_ISSUER: Final = "urn:hardened-duck:control-api"
JWT_AUDIENCE: Final = "hardened-duck"
# Context key overriding the engine code hash the control plane allows (default: computed when bundling).
CONTEXT_ENGINE_CODE_HASH: Final = "hd:engineCodeHash"

# --- shadow replay (issue 18; shadow.py) ------------------------------------------------------------------
# Secrets Manager names the control API stores comparison DSNs under; the replay Lambda reads only these.
SHADOW_SECRET_PREFIX: Final = "hd/shadow/"  # noqa: S105 - a name prefix, not a secret
SHADOW_DATA_PREFIX: Final = "shadow/"  # data-bucket prefix of query sets, batch results and reports
SHADOW_COMPARISON_PORT_DEFAULT: Final = 5432
# The customer's comparison PostgreSQL, reached from the isolated subnets over peering, a Transit Gateway or a
# PrivateLink endpoint (the routes are the customer's): CIDRs (a list, or one comma-separated string) and port.
CONTEXT_SHADOW_COMPARISON_CIDRS: Final = "hd:shadowComparisonCidrs"
CONTEXT_SHADOW_COMPARISON_PORT: Final = "hd:shadowComparisonPort"
# The engine's name as its TLS certificate states it, resolving inside the VPC to the engine NLB (a private hosted
# zone record): the replay verifies the engine's certificate (verify-full). Default: the NLB's own DNS name.
CONTEXT_SHADOW_ENGINE_HOST: Final = "hd:shadowEngineHost"
# The root certificate(s) that verify it (libpq sslrootcert: a path in the function's code or layers, or "system"
# for the trusted public roots). Without it the replay's verify-full has nothing to verify with and fails closed.
CONTEXT_SHADOW_ENGINE_CA_FILE: Final = "hd:shadowEngineCaFile"

# --- key lifecycle and webhooks (issue 19; lifecycle.py) ---------------------------------------------------
# Secrets Manager names successor API keys are written to (hd/keys/<org_id>/..., checked by hd_core.key_admin).
KEY_SECRET_PREFIX: Final = "hd/keys/"  # noqa: S105 - a name prefix, not a secret
ERASURE_SWEEP_MINUTES: Final = 5  # the forget worker runs pending GDPR forget requests this often (erasure.py)
WEBHOOK_SWEEP_MINUTES: Final = 5  # the delivery Lambda re-enqueues due deliveries this often

# --- the deployed fleet (issue 21; engine_fleet.py, monitoring.py, perimeter.py) ----------------------------
ENGINE_METRICS_NAMESPACE: Final = "HardenedDuck/Engine"  # engine_host/ops/cloudwatch.py ENGINE_NAMESPACE
CPU_TARGET_PERCENT: Final = 60  # target tracking on the group's average CPU
# Target tracking on the engines' ActiveConnections (average per host): the tier's concurrent statements
# (engine_host/boot/sizing.py), so the fleet grows before sessions outnumber what one host runs at once.
TIER_CONNECTIONS_TARGET: Final[dict[str, int]] = {"starter": 25, "standard": 50, "performance": 100,
                                                  "high_memory": 200}
SCALE_IN_COOLDOWN_SECONDS: Final = 600  # hosts warm their cache for minutes: do not give them back quickly
DRAIN_GRACE_SECONDS: Final = 90  # EngineConfig.drain_grace_seconds: running statements' time to finish
# systemd's stop timeout for hd-engine: the drain grace, then the interrupt and the audit flush.
ENGINE_STOP_TIMEOUT_SECONDS: Final = DRAIN_GRACE_SECONDS + 60
CERTIFICATE_ALARM_DAYS: Final = 30  # alarm this long before the served TLS certificate expires
# Spot for non-production (seed 003: dev and staging): context hd:spot=true, allowed only with hd:environment
# naming a non-production environment; production stays on-demand.
CONTEXT_SPOT: Final = "hd:spot"
CONTEXT_ENVIRONMENT: Final = "hd:environment"
NON_PRODUCTION_ENVIRONMENTS: Final = frozenset({"dev", "development", "staging", "test", "sandbox"})

# --- OpenTelemetry (issue 20; tracing.py) -------------------------------------------------------------------
# An OTLP/HTTP collector URL: the engine hosts' EngineConfig.otel_endpoint and the Lambdas' HD_OTEL_ENDPOINT.
CONTEXT_OTEL_ENDPOINT: Final = "hd:otelEndpoint"
# The networks (IPv4 CIDRs) of a collector in the VPC: the engine and Lambda groups may reach its port there only.
CONTEXT_OTEL_COLLECTOR_CIDRS: Final = "hd:otelCollectorCidrs"
# The ADOT collector Lambda layer version ARN (this region): the Lambdas send to its extension on localhost.
CONTEXT_OTEL_COLLECTOR_LAYER: Final = "hd:otelCollectorLayerArn"

# The `purpose` of the encryption context a host wraps and unwraps its hash-mask keys under
# (engine_host/engine/masking.py): the only purpose a fleet host may use the data key for. The control plane
# seals other secrets under the same key with purposes of their own (TOTP seeds, webhook secrets, erasure
# subjects), which a host must not be able to open.
HOST_DATA_KEY_PURPOSE: Final = "hd-mask-hash"
