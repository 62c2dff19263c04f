"""Federation key refresh (issue 21, item 5): an hourly schedule pins each configured issuer's signing keys.

Runs outside the VPC (the isolated subnets have no internet route, and no VPC endpoint serves an arbitrary
identity provider), fetching only the configured issuers' discovery documents and JWKS over https, and writes the
keys to the control table, where the control API's sign-in verifies federated tokens without fetching anything
(`hd_core.federation_keys`). An issuer whose fetch fails keeps its previous keys and counts in the
`FederationKeyRefreshFailures` metric, which alarms.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from functions.shared.lambda_entry import METRICS_NAMESPACE, scheduled_entry
from functions.shared.wiring import services
from hd_core.control_settings import settings
from hd_core.federation import FederatedIssuer
from hd_core.federation_keys import refresh_pinned_keys

SERVICE = "hd-federation-keys"
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE)
FAILURES_METRIC = "FederationKeyRefreshFailures"


def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Refresh every configured issuer's pinned keys; the outcome per issuer (key counts, errors)."""
    issuers = [FederatedIssuer(**item) for item in json.loads(settings().federation_issuers)]
    outcomes = refresh_pinned_keys(services().store, issuers)
    failures = sum(1 for outcome in outcomes if outcome.error is not None)
    metrics.add_metric(name=FAILURES_METRIC, unit=MetricUnit.Count, value=failures)
    return {"issuers": [{"issuer": o.issuer, "keys": o.keys, "error": o.error} for o in outcomes],
            "failures": failures}


lambda_handler = scheduled_entry(run, SERVICE)
