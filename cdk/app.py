"""Build the Hardened Duck CDK app offline: context from cdk.json, a fixed account and Region, cdk-nag on every synth.

`python cdk/app.py` and `npx cdk synth` (which runs this file with the same cdk.json) give the same templates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# Node 20 is what we have; jsii prints an end-of-life banner on every run without this.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
CDK_DIR = Path(__file__).resolve().parent
if str(CDK_DIR) not in sys.path:  # `hd_cdk` lives next to this file
    sys.path.insert(0, str(CDK_DIR))

try:
    from aws_cdk import App, Environment
except ImportError:  # the usual cause: a Python other than the one this repository was installed into
    if __name__ != "__main__":
        raise
    sys.exit(f"cdk/app.py: the AWS CDK libraries are not installed for {sys.executable}: run "
             "`.venv/bin/pip install -e '.[cdk]'`, then `.venv/bin/python cdk/app.py`")

from hd_cdk import constants  # noqa: E402
from hd_cdk.nag import apply_packs  # noqa: E402
from hd_cdk.packaging import bundling_enabled  # noqa: E402
from hd_cdk.stack import HardenedDuckStack  # noqa: E402

CDK_JSON = CDK_DIR.parent / "cdk.json"


def cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """The `context` of cdk.json (feature flags and hd:* settings); the CLI is not there to read it for us."""
    document = json.loads(path.read_text(encoding="utf-8"))
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise ValueError(f"{path}: 'context' must be an object, got {type(context).__name__}")
    return context


def _prefix_list_id(app: App, key: str, known: dict[str, str], region: str, service: str) -> str:
    """A gateway endpoint's prefix list ID for `region`: from context, else the known table, else a clear error."""
    value = app.node.try_get_context(key) or known.get(region)
    if not value:
        raise ValueError(
            f"no {service} prefix list ID known for Region {region}: set context {key!r} from `aws ec2 "
            f"describe-managed-prefix-lists --filters Name=prefix-list-name,Values=com.amazonaws.{region}.{service}`"
        )
    return str(value)


def _engine_code_hash(app: App) -> str:
    """The hash engine hosts will report for the code this app packages: context `hd:engineCodeHash`, else
    computed by the engine's own code (`python -m engine_host.runtime.heartbeat_loop`) when bundling, else empty."""
    value = app.node.try_get_context(constants.CONTEXT_ENGINE_CODE_HASH)
    if value:
        return str(value)
    if not bundling_enabled(app):
        return ""
    repo = CDK_DIR.parent
    python_path = os.pathsep.join([str(repo), str(repo / "layers" / "core")])
    result = subprocess.run(
        [sys.executable, "-m", "engine_host.runtime.heartbeat_loop"],
        cwd=repo, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": python_path},
    )
    return result.stdout.strip()


def build_app(context: dict[str, Any] | None = None, outdir: str | None = None) -> App:
    """The app with its one stack; `context` overrides cdk.json (e.g. {"hd:bundling": False} in tests)."""
    # What the CDK CLI passes an app by default, so `python cdk/app.py` and `npx cdk synth` write the same
    # templates (cdk.json turns version reporting off: no CDKMetadata resource, nothing reported to AWS).
    cli_defaults = {"aws:cdk:enable-path-metadata": True, "aws:cdk:enable-asset-metadata": True}
    merged = {**cli_defaults, **cdk_json_context(), **(context or {})}
    app = App(context=merged, outdir=outdir or os.environ.get("CDK_OUTDIR"))
    account = str(app.node.try_get_context(constants.CONTEXT_ACCOUNT) or constants.DEFAULT_ACCOUNT)
    region = str(app.node.try_get_context(constants.CONTEXT_REGION) or constants.DEFAULT_REGION)
    approved_cidrs = app.node.try_get_context(constants.CONTEXT_APPROVED_CIDRS) or []
    if isinstance(approved_cidrs, str):  # `-c hd:approvedCidrs=10.0.0.0/8,192.168.0.0/16` arrives as one string
        approved_cidrs = [cidr for cidr in approved_cidrs.split(",") if cidr.strip()]
    HardenedDuckStack(
        app,
        constants.STACK_NAME,
        env=Environment(account=account, region=region),
        description="Hardened Duck: governed SQL warehouse (DuckDB behind pgwire) in the customer's account",
        approved_cidrs=list(approved_cidrs),
        s3_prefix_list_id=_prefix_list_id(app, constants.CONTEXT_S3_PREFIX_LIST, constants.S3_PREFIX_LISTS,
                                          region, "s3"),
        dynamodb_prefix_list_id=_prefix_list_id(app, constants.CONTEXT_DYNAMODB_PREFIX_LIST,
                                                constants.DYNAMODB_PREFIX_LISTS, region, "dynamodb"),
        engine_code_hash=_engine_code_hash(app),
    )
    apply_packs(app)
    return app


def main() -> None:
    """Synthesize into `$CDK_OUTDIR` (set by the CDK CLI) or, run directly, `cdk.out/`, and say what was written."""
    cli_outdir = os.environ.get("CDK_OUTDIR")
    outdir = cli_outdir or str(CDK_DIR.parent / "cdk.out")
    assembly = build_app(outdir=outdir).synth()
    if cli_outdir:
        return  # the CDK CLI reports the assembly itself
    for stack in assembly.stacks:
        resources = len(stack.template.get("Resources", {}))
        print(f"wrote {Path(outdir) / stack.template_file} ({resources} resources)")


if __name__ == "__main__":
    main()
