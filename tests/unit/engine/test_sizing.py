"""Concurrency and memory derived from the instance size (issue 21, item 2), overrides, and the README's table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from engine_host.boot.config import EngineConfigInvalid, parse_config
from engine_host.boot.sizing import GIB, TIER_SIZES, derive_sizing, sizing_table, this_machine
from engine_host.wire.server import SPARE_WORKER_THREADS

README = Path(__file__).resolve().parents[3] / "README.md"


@pytest.mark.parametrize(("vcpus", "memory_gib", "statements"), [(4, 32, 25), (8, 64, 50), (16, 128, 100),
                                                                 (32, 256, 200)])
def test_the_seed_tiers_get_their_concurrent_statements(vcpus: int, memory_gib: int, statements: int) -> None:
    sizing = derive_sizing(vcpus, memory_gib * GIB)
    assert sizing.max_concurrent_statements == statements
    assert sizing.max_queued_statements == 2 * statements
    assert sizing.worker_threads == statements + SPARE_WORKER_THREADS
    assert sizing.duckdb_threads == vcpus
    assert sizing.memory_limit_bytes == memory_gib * GIB // 2


def test_a_one_vcpu_machine_runs_six_statements_at_once() -> None:
    assert derive_sizing(1, 2 * GIB).max_concurrent_statements == 6


def test_overrides_replace_the_derived_values_and_the_queue_and_threads_follow_the_concurrency() -> None:
    sizing = derive_sizing(8, 64 * GIB, max_concurrent_statements=10)
    assert (sizing.max_concurrent_statements, sizing.max_queued_statements, sizing.worker_threads) == (
        10, 20, 10 + SPARE_WORKER_THREADS)
    sizing = derive_sizing(8, 64 * GIB, max_queued_statements=0, worker_threads=60, duckdb_threads=2,
                           memory_limit_bytes=8 * GIB)
    assert (sizing.max_queued_statements, sizing.worker_threads, sizing.duckdb_threads,
            sizing.memory_limit_bytes) == (0, 60, 2, 8 * GIB)


@pytest.mark.parametrize("overrides", [{"worker_threads": 10, "max_concurrent_statements": 20},
                                       {"duckdb_threads": 0}, {"max_concurrent_statements": -1}])
def test_impossible_overrides_are_refused(overrides: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        derive_sizing(8, 64 * GIB, **overrides)


def test_this_machine_reports_what_the_process_may_use() -> None:
    vcpus, memory = this_machine()
    assert vcpus >= 1 and memory > 0


def _config(**extra: Any) -> dict[str, Any]:
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    return {"org_id": "acme", "account_id": "123456789012", "region": "eu-west-1", "vpc_id": "vpc-0123456789abcdef0",
            "security_group_ids": ["sg-0123456789abcdef0"], "kms_key_arn": key, "data_bucket": "hd-data",
            "audit_bucket": "hd-audit", "control_table": "hd-control", "signing_key_arn": key,
            "checkpoint_key_arn": key, **extra}


def test_the_configuration_carries_the_overrides_and_the_fleet_settings() -> None:
    config = parse_config(_config(max_concurrent_statements=30, duckdb_threads=4, auto_scaling_group_name="hd-fleet",
                                  drain_grace_seconds=45), "test")
    assert (config.max_concurrent_statements, config.duckdb_threads, config.worker_threads) == (30, 4, None)
    assert (config.auto_scaling_group_name, config.drain_grace_seconds) == ("hd-fleet", 45)
    assert parse_config(_config(), "test").drain_grace_seconds == 90


@pytest.mark.parametrize(("extra", "field"), [
    ({"max_concurrent_statements": 0}, "max_concurrent_statements"),
    ({"worker_threads": 5, "max_concurrent_statements": 10}, "worker_threads"),
    ({"drain_grace_seconds": 0}, "drain_grace_seconds"),
    ({"auto_scaling_group_name": "bad name; rm"}, "auto_scaling_group_name"),
])
def test_bad_fleet_settings_name_their_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(EngineConfigInvalid) as raised:
        parse_config(_config(**extra), "test")
    assert raised.value.field == field


def test_the_readme_table_is_the_derived_one() -> None:
    assert sizing_table() in README.read_text(encoding="utf-8")


def test_the_tiers_are_the_deployments_tiers() -> None:
    import sys

    sys.path.insert(0, str(README.parent / "cdk"))
    from hd_cdk.constants import TIER_INSTANCE_TYPES

    assert {tier: size[0] for tier, size in TIER_SIZES.items()} == TIER_INSTANCE_TYPES
    assert all(re.fullmatch(r"r6id\.\d*x?large", instance) for instance, _, _ in TIER_SIZES.values())
