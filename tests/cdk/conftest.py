"""CDK tests: `cdk/` on sys.path (the `hd_cdk` package), jsii quiet about Node 20, and one synth of the app.

Synthesizing costs seconds, so the whole app (all cdk-nag packs, bundling off) is synthesized once per test
session by `synthesized_app`; construct-level tests that need other inputs build small stacks of their own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Node 20 is what we have; without this jsii prints an end-of-life banner on every synth.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

CDK_DIR = Path(__file__).resolve().parents[2] / "cdk"
if str(CDK_DIR) not in sys.path:
    sys.path.insert(0, str(CDK_DIR))

# Context of the shared synth: bundling off (no pip downloads), one approved client network, and where shadow
# replay's comparison PostgreSQL is (a peered network, on a port other than the default) and how it verifies the engine,
# one federation issuer (the key refresh job and its alarm are built only with one) and a private CA.
# Every optional feature at once, against CloudFormation's resource limit: tests/cdk/test_resource_limit.py.
TEST_CONTEXT: dict[str, Any] = {"hd:bundling": False, "hd:approvedCidrs": ["10.20.0.0/16"],
                                "hd:shadowComparisonCidrs": ["10.30.0.0/24"], "hd:shadowComparisonPort": 6432,
                                "hd:shadowEngineCaFile": "system",
                                "hd:federationIssuers": [{"preset": "gcp", "audience": "hardened-duck-test"}],
                                # A private CA, so the TLS certificate's rotation function is in the stack.
                                "hd:privateCaArn": "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/"
                                                   "12345678-1234-1234-1234-123456789012"}
STACK_NAME = "HardenedDuck"


@dataclass
class SynthesizedApp:
    """The result of synthesizing the whole app once: templates, the validation report, timing."""

    app: Any  # aws_cdk.App
    outdir: Path
    seconds: float
    error: str | None  # the synth failure (e.g. cdk-nag's ValidationFailed report), None on success

    def template_path(self, stack: str = STACK_NAME) -> Path:
        return self.outdir / f"{stack}.template.json"

    def template(self, stack: str = STACK_NAME) -> dict[str, Any]:
        """The synthesized CloudFormation template as a dict (fails the test when the synth failed)."""
        if self.error is not None:
            pytest.fail(f"synth failed:\n{self.error}")
        return json.loads(self.template_path(stack).read_text(encoding="utf-8"))

    def validation_report(self) -> dict[str, Any]:
        """CDK's policy validation report (cdk-nag packs and CloudFormation Validate), written on every synth."""
        return json.loads((self.outdir / "validation-report.json").read_text(encoding="utf-8"))


def load_app_module() -> Any:
    """`cdk/app.py` as a module (loaded by path: a top-level name `app` is too generic to import by)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hd_cdk_app", CDK_DIR / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthesized_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynthesizedApp]:
    """The whole app, synthesized once for the session with all four cdk-nag packs and bundling off."""
    build_app = load_app_module().build_app
    outdir = tmp_path_factory.mktemp("cdk.out")
    started = time.perf_counter()
    app = build_app(context=TEST_CONTEXT, outdir=str(outdir))
    error: str | None = None
    try:
        app.synth()
    except RuntimeError as failure:  # jsii surfaces ValidationFailed as RuntimeError with the report
        error = str(failure)
    yield SynthesizedApp(app=app, outdir=outdir, seconds=time.perf_counter() - started, error=error)


@pytest.fixture(scope="session")
def stack_template(synthesized_app: SynthesizedApp) -> Any:
    """`aws_cdk.assertions.Template` of the main stack."""
    from aws_cdk.assertions import Template

    return Template.from_json(synthesized_app.template())
