"""`hd engine bootstrap-owner` against a deployed control table (moto DynamoDB)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from engine_host.cli import main
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.models import Role

TABLE = "HardenedDuck-Control"
ARGS = ["engine", "bootstrap-owner", "--table", TABLE, "--org-id", "org_fleet", "--email", "owner@example.com",
        "--region", "eu-west-1"]


@pytest.fixture
def store(aws_credentials: None) -> Iterator[DynamoDbControlStore]:
    with mock_aws():
        client: Any = boto3.client("dynamodb", region_name="eu-west-1")
        client.create_table(**create_table_kwargs(TABLE))
        yield DynamoDbControlStore(TABLE, client=client)


def test_the_first_owner_gets_a_working_key_printed_once(store: DynamoDbControlStore,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(ARGS) == 0
    out = capsys.readouterr().out
    key = out.strip().splitlines()[-1]
    user_id = out.split("Owner ", 1)[1].split(" ", 1)[0]
    assert key.startswith("hd_live_"), "a deployment's keys are live keys"

    principal = ApiKeyAuthenticator(store, ensure_pepper(store)).authenticate(user_id, key)
    assert (principal.org_id, principal.role) == ("org_fleet", Role.OWNER)
    assert {env.name for env in store.list_environments("org_fleet")} == {"production", "staging"}


def test_a_second_run_creates_nothing_and_says_why(store: DynamoDbControlStore,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(ARGS) == 0
    capsys.readouterr()
    assert main([*ARGS[:-4], "--email", "someone-else@example.com", "--region", "eu-west-1"]) == 1
    assert "already has its first Owner" in capsys.readouterr().err
    assert len(store.list_users("org_fleet")) == 1
