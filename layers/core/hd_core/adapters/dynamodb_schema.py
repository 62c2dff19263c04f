"""The control table's shape as plain data: the DynamoDB adapter, its tests and the CDK app all read it here.

One table holds every control entity (single-table design, see `dynamodb_store` for the item
layouts): string keys `PK`/`SK`, and one global secondary index `GSI1` (`GSI1PK`/`GSI1SK`, all
attributes projected) that lists an organisation's users, keys, environments, JIT requests and
policies, and every organisation, in creation order. Items without `GSI1PK` stay out of the index.
"""

from __future__ import annotations

from typing import Any

PARTITION_KEY = "PK"
SORT_KEY = "SK"
GSI1_NAME = "GSI1"
GSI1_PARTITION_KEY = "GSI1PK"
GSI1_SORT_KEY = "GSI1SK"

KEY_SCHEMA: tuple[dict[str, str], ...] = (
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
)

# Only key attributes are declared: DynamoDB is schemaless for everything else.
ATTRIBUTE_DEFINITIONS: tuple[dict[str, str], ...] = (
    {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
    {"AttributeName": SORT_KEY, "AttributeType": "S"},
    {"AttributeName": GSI1_PARTITION_KEY, "AttributeType": "S"},
    {"AttributeName": GSI1_SORT_KEY, "AttributeType": "S"},
)

GLOBAL_SECONDARY_INDEXES: tuple[dict[str, Any], ...] = (
    {
        "IndexName": GSI1_NAME,
        "KeySchema": [
            {"AttributeName": GSI1_PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": GSI1_SORT_KEY, "KeyType": "RANGE"},
        ],
        # ALL: a list is one Query, with no follow-up GetItem per entity.
        "Projection": {"ProjectionType": "ALL"},
    },
)

BILLING_MODE = "PAY_PER_REQUEST"

# Items carrying this attribute (epoch seconds) are deleted by DynamoDB some time after it passes:
# brute-force failure records of names nobody holds must not pile up. Readers still check expiry,
# since the deletion can lag by days. TTL is a table setting, not part of `create_table`.
TTL_ATTRIBUTE = "ttl_epoch"


def create_table_kwargs(table_name: str) -> dict[str, Any]:
    """Keyword arguments for `dynamodb_client.create_table(**...)` that build the control table (on-demand)."""
    return {
        "TableName": table_name,
        "KeySchema": [dict(element) for element in KEY_SCHEMA],
        "AttributeDefinitions": [dict(definition) for definition in ATTRIBUTE_DEFINITIONS],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index["IndexName"],
                "KeySchema": [dict(element) for element in index["KeySchema"]],
                "Projection": dict(index["Projection"]),
            }
            for index in GLOBAL_SECONDARY_INDEXES
        ],
        "BillingMode": BILLING_MODE,
    }
