"""`hd engine bootstrap-owner`: the first organisation, Owner and API key of a fresh deployment's DynamoDB table.

Run once after `cdk deploy`, by the platform engineer, with credentials that may write the control
table. It prints the Owner's API key once (only its hash is stored); everything else (people, keys,
policies) is then done through the control API with that key. Running it again creates nothing.
"""

from __future__ import annotations

import argparse
import sys

from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import bootstrap_local_owner, ensure_environments
from hd_core.errors import HdError
from hd_core.models import KeyEnv


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="the control table (stack output or the DynamoDB console)")
    parser.add_argument("--org-id", required=True, help="the organisation id given to the stack as OrganizationId")
    parser.add_argument("--org-name", default=None, help="display name of the organisation (default: its id)")
    parser.add_argument("--email", required=True, help="the Owner's email address")
    parser.add_argument("--region", default=None, help="the deployment's region (default: the AWS CLI's)")


def run_bootstrap(args: argparse.Namespace) -> int:
    """Create the Owner once and print the key; 0 on success, 1 if one already exists, 2 on an AWS error."""
    import boto3

    from hd_core.adapters.dynamodb_store import DynamoDbControlStore

    store = DynamoDbControlStore(args.table, client=boto3.client("dynamodb", region_name=args.region))
    try:
        owner = bootstrap_local_owner(store, ApiKeyHasher(), org_id=args.org_id, org_name=args.org_name or args.org_id,
                                      email=args.email, key_env=KeyEnv.LIVE)
        ensure_environments(store, owner.org.org_id)
    except HdError as exc:
        print(f"hd engine bootstrap-owner: {exc} ({exc.code})", file=sys.stderr)
        return 2
    if owner.api_key_plaintext is None:
        print(f"hd engine bootstrap-owner: {args.table} already has its first Owner ({owner.user.user_id}); "
              "nothing was created. Lost the key? Another Owner can issue one through the control API.",
              file=sys.stderr)
        return 1
    print(f"organisation {owner.org.org_id}, Owner {owner.user.user_id} <{owner.user.email}>")
    print("Owner API key (shown once, store it in your secret manager now):")
    print(owner.api_key_plaintext)
    return 0
