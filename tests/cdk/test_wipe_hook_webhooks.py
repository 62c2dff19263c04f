"""The wipe hook's role may read the control table's GSI by name: the organisations and their webhook endpoints
the wipe events are announced to (functions/wipe_hook/handler.py served_orgs, hd_core.webhook_events.instance_wipe)."""

from __future__ import annotations

from hd_core.adapters.dynamodb_schema import GSI1_NAME
from tests.cdk import test_wipe_hook as wipe_synth
from tests.cdk.test_engine_fleet import ACCOUNT, REGION, FleetSynth, resources_for, role_statements

synth = wipe_synth.synth  # the same module-scoped synthesized fleet, by name


def test_the_wipe_role_queries_the_table_and_its_one_named_index_only(synth: FleetSynth) -> None:
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/hd-control"
    statements = role_statements(synth, "WipeRole")
    assert sorted(resources_for(statements, "dynamodb:Query")) == sorted([table, f"{table}/index/{GSI1_NAME}"])
    assert resources_for(statements, "dynamodb:PutItem") == [table]  # the index grants no writes
