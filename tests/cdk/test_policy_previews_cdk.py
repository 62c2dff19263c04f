"""The policies function asks the fleet for policy previews in AWS (hd_core/policy_previews.py); no other does."""

from __future__ import annotations

from typing import Any

from hd_core.policy_previews import FLEET, PREVIEWS_ENV
from tests.cdk.conftest import SynthesizedApp


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {props["Handler"]: props for resource in template["Resources"].values()
            if resource["Type"] == "AWS::Lambda::Function" and "Handler" in (props := resource["Properties"])}


def test_only_the_policies_function_sends_previews_to_the_fleet(synthesized_app: SynthesizedApp) -> None:
    functions = _functions(synthesized_app.template())
    asking = {handler for handler, props in functions.items()
              if props.get("Environment", {}).get("Variables", {}).get(PREVIEWS_ENV) == FLEET}

    assert asking == {"functions.policies.handler.lambda_handler"}
    # Its 10 s wait fits the function's timeout, which fits API Gateway's 29 s.
    assert 10 < functions["functions.policies.handler.lambda_handler"]["Timeout"] <= 29
