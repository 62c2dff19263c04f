"""cdk-nag 3.x wiring: the four compliance packs on every synth, and acknowledgments that carry a real reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from aws_cdk import Acknowledgment, Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks, NIST80053R5Checks, PCIDSS321Checks
from constructs import IConstruct

# Rule id prefix of each pack we run (e.g. "HIPAA.Security-IAMNoInlinePolicy").
PACKS: Final[tuple[str, ...]] = ("AwsSolutions", "HIPAA.Security", "NIST.800.53.R5", "PCI.DSS.321")

# CDK records acknowledgments as construct metadata of this type: {"<pack>::<rule id>": reason}.
ACKNOWLEDGED_RULES_METADATA: Final = "aws:cdk:acknowledged-rules"

# A reason must say why the finding is acceptable here; these say nothing.
_EMPTY_REASONS: Final = frozenset({"n/a", "na", "none", "todo", "tbd", "ok", "fine", "ignore", "suppressed", "wontfix"})
MIN_REASON_LENGTH: Final = 20


@dataclass(frozen=True)
class NagAcknowledgment:
    """One acknowledged finding as recorded in the construct tree."""

    path: str
    pack: str
    rule_id: str
    reason: str


def apply_packs(app: IConstruct) -> None:
    """Run AwsSolutions, HIPAA Security, NIST 800-53 R5 and PCI DSS 3.2.1 on every synth of `app`."""
    Validations.of(app).add_plugins(
        AwsSolutionsChecks(app),
        HIPAASecurityChecks(app),
        NIST80053R5Checks(app),
        PCIDSS321Checks(app),
    )


def pack_of(rule_id: str) -> str:
    """The pack a rule id belongs to (`HIPAA.Security-IAMNoInlinePolicy` -> `HIPAA.Security`); ValueError if none."""
    for pack in PACKS:
        if rule_id.startswith(f"{pack}-"):
            return pack
    raise ValueError(f"unknown cdk-nag rule id {rule_id!r}: expected a rule of one of the packs {PACKS}")


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding on `construct` and its children, saying why it is acceptable here.

    `rule_id` is the pack's rule id, optionally naming one finding (`AwsSolutions-IAM5[Resource::*]`).
    cdk-nag 3 matches ids exactly and fails the synth on anything unacknowledged, so a typo would leave
    a dead acknowledgment behind: hence the pack check. Raises ValueError on an unknown id or a reason
    that does not explain anything.
    """
    pack = pack_of(rule_id)
    text = reason.strip()
    if text.lower().rstrip(".") in _EMPTY_REASONS or len(text) < MIN_REASON_LENGTH:
        raise ValueError(
            f"acknowledgment of {rule_id} needs a specific reason (why it is acceptable here, "
            f"at least {MIN_REASON_LENGTH} characters), got {reason!r}"
        )
    # "<plugin>::<rule>" is the id the validation report asks for; a bare id would be filed as an annotation.
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{pack}::{rule_id}", reason=text))


def acknowledgments(root: IConstruct) -> list[NagAcknowledgment]:
    """Every cdk-nag acknowledgment made on `root` or below, in construct-tree order."""
    found: list[NagAcknowledgment] = []
    for construct in root.node.find_all():
        for entry in construct.node.metadata:
            if entry.type != ACKNOWLEDGED_RULES_METADATA:
                continue
            for key, reason in dict(entry.data).items():
                pack, _, rule_id = str(key).partition("::")
                if pack in PACKS:
                    found.append(NagAcknowledgment(construct.node.path, pack, rule_id, str(reason)))
    return found


def acknowledgments_per_pack(root: IConstruct) -> Counter[str]:
    """Number of acknowledgments per pack below `root` (every pack present, zero included)."""
    counts: Counter[str] = Counter(dict.fromkeys(PACKS, 0))
    counts.update(ack.pack for ack in acknowledgments(root))
    return counts
