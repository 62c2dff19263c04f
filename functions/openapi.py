"""The control API's OpenAPI document, generated from the resolvers of every function in `FUNCTION_MODULES`.

`python -m functions.openapi --write` regenerates `functions/openapi.json` (checked in; the auth
function serves it at `/v1/openapi.json`); `--check` fails when the checked-in file has drifted from
the code. Each operation names the function that serves it in `x-hd-function`, which is how the
local server and the CDK app route a request to its Lambda.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver

FUNCTION_MODULES: dict[str, str] = {
    "auth": "functions.auth.handler",
    "users": "functions.users.handler",
    "api_keys": "functions.api_keys.handler",
    "policies": "functions.policies.handler",
    "jit": "functions.jit.handler",
    "quotas": "functions.quotas.handler",
    "audit": "functions.audit.handler",
    "fleet": "functions.fleet.handler",
    "shadow": "functions.shadow.handler",
    "webhooks": "functions.webhooks.handler",
    "forget": "functions.forget.handler",
}
DOCUMENT_PATH = Path(__file__).resolve().parent / "openapi.json"
TITLE = "Hardened Duck control API"
VERSION = "1.0.0"
_PUBLIC_OPERATIONS = {"/v1/auth/login", "/v1/auth/refresh", "/v1/auth/federate", "/.well-known/jwks.json",
                      "/v1/openapi.json", "/v1/auth/mfa/enroll-with-password", "/v1/auth/mfa/confirm-with-password"}
# Called by engine hosts with their instance role: API Gateway verifies the SigV4 signature (AWS_IAM).
_IAM_OPERATIONS = {"/v1/fleet/heartbeat"}


def function_app(name: str) -> APIGatewayRestResolver:
    """The resolver of one function, by its name in `FUNCTION_MODULES`."""
    app = importlib.import_module(FUNCTION_MODULES[name]).app
    assert isinstance(app, APIGatewayRestResolver)
    return app


def openapi_document() -> dict[str, Any]:
    """One OpenAPI 3 document for every function, with security schemes and `x-hd-function` on each operation."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    openapi_version = "3.1.0"
    for name in FUNCTION_MODULES:
        part = json.loads(function_app(name).get_openapi_json_schema(title=TITLE, version=VERSION))
        openapi_version = part.get("openapi", openapi_version)
        for path, operations in part.get("paths", {}).items():
            for method, operation in operations.items():
                if method in paths.get(path, {}):
                    raise ValueError(f"{method.upper()} {path} is served by two functions")
                operation["x-hd-function"] = name
                if path in _IAM_OPERATIONS:
                    operation["security"] = [{"sigv4": []}]
                    operation["x-hd-auth"] = "aws_iam"
                elif path not in _PUBLIC_OPERATIONS:
                    operation["security"] = [{"bearer": []}, {"apiKey": []}, {"xApiKey": []}]
                paths.setdefault(path, {})[method] = operation
        for schema_name, schema in part.get("components", {}).get("schemas", {}).items():
            if schemas.get(schema_name, schema) != schema:
                raise ValueError(f"two functions define different schemas named {schema_name}")
            schemas[schema_name] = schema
    return {
        "openapi": openapi_version,
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Users, API keys, policies, JIT elevation, quotas, audit and engine-host heartbeats for "
            'Hardened Duck. Errors are `{"error": {"code": "HD_ERR_…", "message": …, "request_id": …}}`.',
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                           "description": "`ApiKey hd_live_…`"},
                "xApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                # API Gateway's own marking of IAM authorisation: a SigV4-signed Authorization header.
                "sigv4": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "x-amazon-apigateway-authtype": "awsSigv4",
                          "description": "AWS SigV4 (service `execute-api`) with the engine hosts' instance role"},
            },
        },
    }


def render(document: dict[str, Any]) -> str:
    """The checked-in text form: stable key order, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions.openapi", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite functions/openapi.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if functions/openapi.json is stale")
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.write:
        DOCUMENT_PATH.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        current = DOCUMENT_PATH.read_text(encoding="utf-8") if DOCUMENT_PATH.exists() else ""
        if current != text:
            print("functions/openapi.json is stale: run `python -m functions.openapi --write`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
