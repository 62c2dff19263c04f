"""Federation in CDK (issue 21, item 5): issuers from context, the sign-in function on pinned keys, the hourly
refresh job outside the VPC writing only its setting items, and its alarm."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import App

from hd_cdk.federation import CONTEXT_FEDERATION_ISSUERS, PINNED_KEYS_LEADING_KEY, issuers_from_context


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Function"}


def test_the_sign_in_function_verifies_federated_tokens_with_pinned_keys_only(synthesized_app: Any) -> None:
    functions = _functions(synthesized_app.template())
    (auth,) = [p for k, p in functions.items() if k.startswith("ControlApiAuth") and "Handler" in p
               and p["Handler"].startswith("functions.auth")]
    variables = auth["Environment"]["Variables"]
    assert variables["HD_FEDERATION_PINNED_KEYS"] == "true"
    (issuer,) = json.loads(variables["HD_FEDERATION_ISSUERS"])
    assert (issuer["issuer"], issuer["jwks_uri"]) == ("https://accounts.google.com",
                                                      "https://www.googleapis.com/oauth2/v3/certs")


def test_the_refresh_job_runs_hourly_outside_the_vpc_and_writes_only_pinned_key_items(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    functions = _functions(template)
    (name, refresh), = [(k, p) for k, p in functions.items()
                        if p.get("Handler") == "functions.federation_keys.handler.lambda_handler"]
    assert "VpcConfig" not in refresh  # the internet is where the identity providers are
    assert json.loads(refresh["Environment"]["Variables"]["HD_FEDERATION_ISSUERS"])[0]["name"] == "gcp"
    (rule,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Events::Rule"
               and any(t["Arn"] == {"Fn::GetAtt": [name, "Arn"]} for t in r["Properties"].get("Targets", []))]
    assert rule["ScheduleExpression"] == "rate(1 hour)"
    writes = [s for r in template["Resources"].values() if r["Type"] == "AWS::IAM::ManagedPolicy"
              for s in r["Properties"]["PolicyDocument"]["Statement"]
              if "PinnedKeysWrite" in json.dumps(r.get("Metadata", {})) or s.get("Condition", {}).get(
                  "ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys") == [PINNED_KEYS_LEADING_KEY]]
    assert writes and all(s["Action"] == "dynamodb:PutItem" for s in writes)
    alarms = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"
              and r["Properties"].get("MetricName") == "FederationKeyRefreshFailures"]
    assert len(alarms) == 1 and alarms[0]["AlarmActions"]


@pytest.mark.parametrize(("value", "message"), [
    ([{"preset": "okta", "audience": "x"}], "unknown preset"),
    ([{"name": "a", "issuer": "https://a", "audience": "x", "jwks_uri": "http://a.example.com/keys"}], "https"),
    ([{"preset": "gcp", "audience": "x"}, {"preset": "gcp", "audience": "y"}], "unique"),
    ({"preset": "gcp"}, "list"),
    ([{"preset": "gcp"}], "audience"),
])
def test_bad_issuer_context_fails_the_synth(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        issuers_from_context(App(context={CONTEXT_FEDERATION_ISSUERS: value}))


def test_issuers_from_context_accept_json_text_and_presets() -> None:
    text = json.dumps([{"preset": "aws_sts_outbound", "issuer_url": "https://abc.tokens.sts.global.api.aws",
                        "audience": "hardened-duck"}, {"preset": "azure_ad", "tenant_id": "contoso", "audience": "x"}])
    aws, azure = issuers_from_context(App(context={CONTEXT_FEDERATION_ISSUERS: text}))
    assert aws.jwks_uri == "https://abc.tokens.sts.global.api.aws/.well-known/jwks.json"
    assert azure.issuer == "https://login.microsoftonline.com/contoso/v2.0"
    assert issuers_from_context(App()) == []
