"""cdk-nag: the four packs run on every synth, nothing is left unacknowledged, every acknowledgment is used."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, Environment, Stack
from aws_cdk import aws_s3 as s3

from hd_cdk.nag import (
    ACKNOWLEDGED_RULES_METADATA,
    PACKS,
    acknowledge,
    acknowledgments,
    acknowledgments_per_pack,
    apply_packs,
    pack_of,
)

REASON = "Single-Region by design: data residency keeps customer data in the deployment Region."


def _pack_reports(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["pluginName"]: r for r in report["pluginReports"] if r["pluginName"] in PACKS}


@pytest.mark.parametrize("reason", ["", "   ", "n/a", "TODO", "suppressed.", "too short"])
def test_acknowledgment_without_a_specific_reason_is_refused(reason: str) -> None:
    bucket = s3.Bucket(Stack(App(), "S"), "B")
    with pytest.raises(ValueError, match="needs a specific reason"):
        acknowledge(bucket, "AwsSolutions-S1", reason)
    assert acknowledgments(bucket) == []


@pytest.mark.parametrize("rule_id", ["S1", "AwsSolution-S1", "NIST.800.53.R4-S3BucketLoggingEnabled", "IAM5"])
def test_acknowledgment_of_a_rule_outside_our_packs_is_refused(rule_id: str) -> None:
    bucket = s3.Bucket(Stack(App(), "S"), "B")
    with pytest.raises(ValueError, match="unknown cdk-nag rule id"):
        acknowledge(bucket, rule_id, REASON)


def test_acknowledgment_is_recorded_on_the_construct_under_the_pack_qualified_id() -> None:
    bucket = s3.Bucket(Stack(App(), "S"), "B")
    acknowledge(bucket, "HIPAA.Security-S3BucketReplicationEnabled", f"  {REASON}  ")
    entries = [m.data for m in bucket.node.metadata if m.type == ACKNOWLEDGED_RULES_METADATA]
    assert entries == [{"HIPAA.Security::HIPAA.Security-S3BucketReplicationEnabled": REASON}]
    (recorded,) = acknowledgments(bucket)
    assert (recorded.path, recorded.pack, recorded.rule_id) == ("S/B", "HIPAA.Security",
                                                                 "HIPAA.Security-S3BucketReplicationEnabled")


def test_finding_ids_name_their_pack() -> None:
    assert pack_of("AwsSolutions-IAM5[Resource::*]") == "AwsSolutions"
    assert pack_of("NIST.800.53.R5-DynamoDBInBackupPlan") == "NIST.800.53.R5"
    assert pack_of("PCI.DSS.321-S3BucketReplicationEnabled") == "PCI.DSS.321"


def test_all_four_packs_report_an_unacknowledged_finding() -> None:
    """A bucket with no logging, no TLS policy and no KMS: every pack must fail the synth over it."""
    app = App()
    s3.Bucket(Stack(app, "Bad", env=Environment(account="123456789012", region="eu-west-1")), "Plain")
    apply_packs(app)
    with pytest.raises(RuntimeError, match="ValidationFailed") as failure:
        app.synth()
    for pack in PACKS:
        assert f"({pack})" in str(failure.value), pack


def test_app_synthesizes_with_every_finding_acknowledged(synthesized_app: Any) -> None:
    assert synthesized_app.error is None, synthesized_app.error
    for name, report in _pack_reports(synthesized_app.validation_report()).items():
        assert report["violations"] == [], (name, report["violations"])


@pytest.mark.slow  # walks every construct of the app for its acknowledgments: CI runs it (`pytest -m slow`)
def test_every_acknowledgment_suppresses_a_real_finding(synthesized_app: Any) -> None:
    """No dead acknowledgments: each one in the tree matches a finding the packs reported at that construct."""
    suppressed = {
        (s["acknowledgedAt"], s["acknowledgedId"])
        for report in _pack_reports(synthesized_app.validation_report()).values()
        for s in report.get("suppressedViolations", [])
    }
    made = {(a.path, f"{a.pack}::{a.rule_id}") for a in acknowledgments(synthesized_app.app)}
    assert made, "expected at least the storage acknowledgments"
    assert made - suppressed == set()


@pytest.mark.slow  # walks every construct of the app for its acknowledgments: CI runs it (`pytest -m slow`)
def test_acknowledgments_per_pack(synthesized_app: Any) -> None:
    counts = acknowledgments_per_pack(synthesized_app.app)
    suppressed = {
        name: len(report.get("suppressedViolations", []))
        for name, report in _pack_reports(synthesized_app.validation_report()).items()
    }
    print("\ncdk-nag acknowledgments per pack:")
    for pack in PACKS:
        print(f"  {pack:16} {counts[pack]:3} acknowledged, {suppressed.get(pack, 0):3} findings suppressed")
    assert set(counts) == set(PACKS)
    for pack in PACKS:
        # An acknowledgment on a parent covers each child finding, so suppressed findings >= acknowledgments.
        assert suppressed.get(pack, 0) >= counts[pack], pack
