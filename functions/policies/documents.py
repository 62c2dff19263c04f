"""The policy documents the policy routes take, one model per managed kind, told apart by `kind`.

They state the shape `hd_core.policy_codec` and `hd_core.policy_validation` accept (names, enums,
ids, list sizes, unknown fields refused), so a document built from the OpenAPI description is not
refused for its shape. What a schema cannot say stays with the validator and is a 400
`HD_ERR_POLICY_INVALID`: whether a row filter parses as SQL, whether a timezone exists, an empty
time window, a network with host bits set, a PHI grant that already ended, a hash mask on a
column tagged as hash-unsafe.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from functions.shared.request_fields import Cidr, NonBlankText, PlainText
from hd_core.client_values import ID_PATTERN
from hd_core.models import Role
from hd_core.policies import MaskFunction, PiiType

# Names are folded to lower case on the way in, so either case is accepted.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
TABLE_PATTERN = rf"^{_NAME}\.{_NAME}$"
COLUMN_PATTERN = rf"^{_NAME}$"
_RESOURCE_PATTERN = rf"^(?:\*|{_NAME}\.\*|{_NAME}\.{_NAME})$"
_HHMM_PATTERN = r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"
_TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}$"

ObjectId = Annotated[str, Field(pattern=ID_PATTERN)]
Table = Annotated[str, Field(pattern=TABLE_PATTERN, max_length=257)]
ColumnName = Annotated[str, Field(pattern=COLUMN_PATTERN, max_length=128)]
# Agent ids and frameworks are names an agent reports for itself: one id each.
AgentName = Annotated[str, Field(pattern=ID_PATTERN)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]
ActionName = Literal["*", "select", "insert", "update", "delete", "create", "alter", "drop"]


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Set from the path (a table binding's says who owns the table instead).
    org_id: ObjectId | None = None


class MaskDocument(_Document):
    kind: Literal["mask"]
    rule_id: ObjectId | None = None
    table: Table
    column: ColumnName
    function: MaskFunction
    visible_chars: int = Field(default=4, ge=0, le=64)
    exempt_roles: list[Role] = Field(default_factory=list, max_length=6)
    agent_ids: list[AgentName] = Field(default_factory=list, max_length=100)
    agent_frameworks: list[AgentName] = Field(default_factory=list, max_length=100)
    pending: bool = Field(default=False, description="The table does not exist yet: store the policy anyway "
                          "(without it, a table or column the live catalog lacks is refused with 422)")


class RowFilterDocument(_Document):
    kind: Literal["row_filter"]
    rule_id: ObjectId | None = None
    table: Table
    filter: PlainText = Field(min_length=1, max_length=4096, description="One SQL condition; `{user_id}`-style "
                              "placeholders are the session's values (see README, Governance)")
    exempt_roles: list[Role] = Field(default_factory=list, max_length=6)
    pending: bool = Field(default=False, description="The table does not exist yet: store the policy anyway "
                          "(without it, a table or column the live catalog lacks is refused with 422)")


class TimeWindowDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(default="00:00", pattern=_HHMM_PATTERN)
    end: str = Field(default="24:00", pattern=_HHMM_PATTERN)
    timezone: str = Field(default="UTC", pattern=_TIMEZONE_PATTERN, max_length=64, description="An IANA name")
    weekdays: list[Weekday] = Field(default_factory=list, max_length=7)
    outside: bool = False


class AbacConditionsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_window: TimeWindowDocument | None = None
    tables: list[Table] = Field(default_factory=list, max_length=100)
    agent_frameworks: list[AgentName] = Field(default_factory=list, max_length=100)
    agent_ids: list[AgentName] = Field(default_factory=list, max_length=100)
    roles: list[Role] = Field(default_factory=list, max_length=6)
    source_cidrs: list[Cidr] = Field(default_factory=list, max_length=50)
    not_source_cidrs: list[Cidr] = Field(default_factory=list, max_length=50)
    agents_only: bool = False


class AbacDocument(_Document):
    kind: Literal["abac"]
    policy_id: ObjectId | None = None
    name: NonBlankText = Field(max_length=200)
    effect: Literal["deny", "DENY", "Deny"] = Field(description="ABAC policies only deny; roles and scopes grant")
    actions: list[ActionName] = Field(min_length=1, max_length=8)
    resources: list[Annotated[str, Field(pattern=_RESOURCE_PATTERN, max_length=257)]] = Field(
        min_length=1, max_length=100
    )
    conditions: AbacConditionsDocument = Field(default_factory=AbacConditionsDocument)
    reason: PlainText = Field(default="", max_length=1000)
    pending: bool = Field(default=False, description="A table the policy names does not exist yet: store it anyway "
                          "(without it, a table the live catalog lacks is refused with 422)")


class ColumnTagDocument(_Document):
    kind: Literal["column_tag"]
    tag_id: ObjectId | None = None
    table: Table
    column: ColumnName
    pii_type: PiiType
    pending: bool = Field(default=False, description="The table does not exist yet: store the policy anyway "
                          "(without it, a table or column the live catalog lacks is refused with 422)")
    patient_key: bool = Field(default=False, description="The column identifies the patient each row is about "
                              "(one per table): PHI disclosures record its values as keyed HMACs")


class PhiGrantDocument(_Document):
    kind: Literal["phi_grant"]
    grant_id: ObjectId | None = None
    user_id: ObjectId
    agent_id: AgentName | None = None
    expires_at: datetime | None = Field(default=None, description="In the future; null: until revoked")
    reason: PlainText = Field(default="", max_length=1000)


class TableBindingDocument(_Document):
    kind: Literal["table_binding"]
    binding_id: ObjectId | None = None
    table: Table
    tenant_column: ColumnName | None = None
    subject_column: ColumnName | None = Field(
        default=None, description="The column naming a data subject: forget requests erase its rows")


PolicyDocument = Annotated[
    MaskDocument
    | RowFilterDocument
    | AbacDocument
    | ColumnTagDocument
    | PhiGrantDocument
    | TableBindingDocument,
    Field(discriminator="kind"),
]


def as_document(document: BaseModel) -> dict[str, Any]:
    """The codec's JSON form of a validated document: only the fields the client sent."""
    return document.model_dump(mode="json", exclude_unset=True) | {"kind": document.kind}  # type: ignore[attr-defined]
