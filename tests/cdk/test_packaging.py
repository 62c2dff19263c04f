"""Lambda packaging: pip argv for the arm64 dependency layer, local copies for hd_core and functions, never Docker.

pip itself is not run (that would download wheels); its argv is checked, and a failing "pip" (the `false`
program) shows how a failure surfaces. The hd_core layer and function code are bundled for real, through
CDK's local bundling, in one synth.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires, version
from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import pytest
from aws_cdk import App, DockerImage, Stack
from aws_cdk import aws_lambda as lambda_
from packaging.markers import default_environment
from packaging.requirements import Requirement

from functions.openapi import FUNCTION_MODULES
from hd_cdk import packaging
from hd_cdk.packaging import (
    ERASURE_REQUIREMENTS,
    RUNTIME_REQUIREMENTS,
    SHADOW_REQUIREMENTS,
    BundlingFailed,
    CopyTreeBundling,
    PipLayerBundling,
    bundling_enabled,
    pinned_requirements,
)

# In the Lambda Python runtime already (boto3 and what it needs); the layer must not shadow them.
LAMBDA_RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
# Loaded here but not needed in Lambda: botocore takes certifi only if present (else its own CA bundle), and
# setuptools' `_distutils_hack` is this virtualenv's import hook.
INCIDENTAL_IMPORTS = {"certifi", "setuptools"}
IMAGE = DockerImage.from_registry("unused")
AWS_ADAPTERS = ["hd_core.adapters.dynamodb_store", "hd_core.adapters.kms_keys", "hd_core.adapters.s3_audit",
                "hd_core.adapters.s3_checkpoints", "hd_core.adapters.ec2_fleet", "functions.shared.wiring"]


def test_pip_command_installs_only_arm64_cp312_binary_wheels_into_the_python_folder() -> None:
    argv = PipLayerBundling(["pydantic==2.14.3", "pyotp==2.12.0"], python="/usr/bin/python3").command("/out")
    assert argv[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    platforms = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--platform"]
    assert platforms[0] == "manylinux2014_aarch64" and all(p.endswith("_aarch64") for p in platforms)
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.12"
    assert argv[argv.index("--implementation") + 1] == "cp"
    assert argv[argv.index("--target") + 1] == "/out/python"
    assert argv[-2:] == ["pydantic==2.14.3", "pyotp==2.12.0"]


def test_dependency_layer_hash_changes_with_the_requirements() -> None:
    first = PipLayerBundling(["pydantic==2.14.3"]).asset_hash()
    assert first == PipLayerBundling(["pydantic==2.14.3"]).asset_hash()
    assert first != PipLayerBundling(["pydantic==2.14.4"]).asset_hash()


def test_runtime_requirements_leave_out_the_engine_and_the_runtime_sdk() -> None:
    names = {_normal(Requirement(r).name) for r in RUNTIME_REQUIREMENTS}
    assert not names & {"duckdb", "sqlglot", "pyarrow", "boto3", "botocore", "numpy"}


def test_requirements_are_pinned_to_the_installed_versions() -> None:
    pinned = dict(r.split("==") for r in pinned_requirements(["pydantic", "pyjwt[crypto]"]))
    assert pinned == {"pydantic": version("pydantic"), "pyjwt[crypto]": version("pyjwt")}
    assert pinned_requirements(["surely-not-installed-hd-package"]) == ["surely-not-installed-hd-package"]


# The shadow function of the control API and the state machine's tasks also carry the shadow layer (shadow.py).
SHADOW_MODULES = ["functions.shadow.handler", "functions.shadow.tasks", "hd_core.adapters.aws_shadow"]
# This environment's compiled overlay of sqlglot's own modules (sqlglotc, and the mypy-extensions it loads) is
# optional: the layer's pure-Python sqlglot parses the same, only slower.
OPTIONAL_ACCELERATORS = {"sqlglotc", "mypy-extensions"}


def test_layer_covers_every_third_party_module_the_handlers_import() -> None:
    """In a fresh interpreter, import every handler and AWS adapter; each third-party package loaded is in the layer."""
    modules = [m for m in [*FUNCTION_MODULES.values(), *AWS_ADAPTERS] if m not in SHADOW_MODULES]
    loaded = _third_party_imports(modules)
    assert {"pydantic", "aws-lambda-powertools", "pyjwt", "argon2-cffi", "pyotp"} <= loaded  # the check sees them
    missing = loaded - LAMBDA_RUNTIME_PROVIDED - INCIDENTAL_IMPORTS - _closure(RUNTIME_REQUIREMENTS)
    assert not missing, f"imported by the handlers but not in the dependency layer: {sorted(missing)}"


def test_shadow_layers_cover_every_third_party_module_the_shadow_functions_import() -> None:
    loaded = _third_party_imports(SHADOW_MODULES)
    assert {"sqlglot", "psycopg", "pydantic"} <= loaded  # the check sees them
    layers = _closure(RUNTIME_REQUIREMENTS + SHADOW_REQUIREMENTS)
    missing = loaded - LAMBDA_RUNTIME_PROVIDED - INCIDENTAL_IMPORTS - OPTIONAL_ACCELERATORS - layers
    assert not missing, f"imported by the shadow functions but not in their layers: {sorted(missing)}"


# The forget worker rewrites Parquet: hd_core.erasure imports pyarrow only in that path, so the modules are named.
ERASURE_WORKER_MODULES = ["functions.forget.worker", "hd_core.adapters.erasure_objects", "pyarrow.parquet",
                          "pyarrow.compute"]


def test_the_forget_api_function_and_the_audit_adapter_import_neither_pyarrow_nor_sqlglot() -> None:
    loaded = _third_party_imports(["functions.forget.handler", "hd_core.adapters.s3_audit"])
    assert "pydantic" in loaded  # the check sees them
    assert not loaded & {"pyarrow", "numpy", "sqlglot"}


def test_the_erasure_layer_covers_every_third_party_module_the_forget_worker_imports() -> None:
    loaded = _third_party_imports(ERASURE_WORKER_MODULES)
    assert {"pyarrow", "pydantic"} <= loaded  # the check sees them
    layers = _closure(RUNTIME_REQUIREMENTS + ERASURE_REQUIREMENTS)
    # numpy is optional to pyarrow (loaded when installed, as here); the layer's pyarrow works without it.
    missing = loaded - LAMBDA_RUNTIME_PROVIDED - INCIDENTAL_IMPORTS - {"numpy"} - layers
    assert not missing, f"imported by the forget worker but not in its layers: {sorted(missing)}"


def _third_party_imports(modules: list[str]) -> set[str]:
    """The distributions a fresh interpreter loads to import `modules` (this project's own left out)."""
    script = "import importlib, json, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + (
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    top_level = set(json.loads(result.stdout)) - set(sys.stdlib_module_names)
    distributions = packages_distributions()
    return {_normal(dist) for top in top_level for dist in distributions.get(top, [])} - {"hardened-duck"}


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


_environment: dict[str, str] = {key: str(value) for key, value in default_environment().items()}


def _closure(requirements: tuple[str, ...]) -> set[str]:
    """The requirements and everything they depend on (with their extras), as pip would install them."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = _normal(requirement.name)
        extras = requirement.extras
        if name in seen and not extras:
            continue
        seen.add(name)
        try:
            dependencies = requires(name) or []
        except PackageNotFoundError:
            continue  # not installed here (tzdata): nothing to follow
        for text in dependencies:
            dependency = Requirement(text)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({**_environment, "extra": e}) for e in extras | {""}):
                pending.append(Requirement(str(dependency.name) + (
                    f"[{','.join(sorted(dependency.extras))}]" if dependency.extras else "")))
    return seen


def test_a_failing_pip_raises_bundling_failed_with_its_exit_status(tmp_path: Path) -> None:
    bundler = PipLayerBundling(["pydantic"], python="false")
    with pytest.raises(BundlingFailed, match="pip exited 1") as raised:
        bundler.try_bundle(str(tmp_path), image=IMAGE)
    assert raised.value.code == "HD_ERR_BUNDLING_FAILED"


def test_copy_bundling_copies_the_tree_without_bytecode(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg" / "__pycache__").mkdir(parents=True)
    (source / "pkg" / "module.py").write_text("X = 1\n")
    (source / "pkg" / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\0")
    (source / "pkg" / "stale.pyc").write_bytes(b"\0")
    out = tmp_path / "out"
    assert CopyTreeBundling(source, "python/lib").try_bundle(str(out), image=IMAGE) is True
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert copied == ["python/lib/pkg/module.py"]


def test_copy_bundling_refuses_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        CopyTreeBundling(tmp_path / "missing", "python")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), (True, True), (False, False), ("false", False), ("TRUE", True), ("0", False)]
)
def test_bundling_context_reads_booleans_and_their_cli_strings(value: object, expected: bool) -> None:
    app = App(context={} if value is None else {"hd:bundling": value})
    assert bundling_enabled(app) is expected


def test_bundling_context_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match="hd:bundling must be true or false"):
        bundling_enabled(App(context={"hd:bundling": "maybe"}))


def _staged_assets(outdir: Path) -> list[Path]:
    return [p for p in outdir.iterdir() if p.is_dir() and p.name.startswith("asset.")]


def test_local_bundling_builds_the_core_layer_and_function_code_without_docker(tmp_path: Path) -> None:
    app = App(outdir=str(tmp_path), context={"hd:bundling": True})
    stack = Stack(app, "Packaging", env={"account": "123456789012", "region": "eu-west-1"})
    layer = packaging.core_layer(stack, "Core")
    lambda_.Function(stack, "Fn", runtime=packaging.LAMBDA_RUNTIME, architecture=packaging.LAMBDA_ARCHITECTURE,
                     code=packaging.function_code(stack), handler="functions.auth.handler.lambda_handler",
                     layers=[layer])
    app.synth()
    assets = _staged_assets(tmp_path)
    core = [a for a in assets if (a / "python" / "hd_core" / "errors.py").is_file()]
    code = [a for a in assets if (a / "functions" / "auth" / "handler.py").is_file()]
    assert len(core) == 1 and len(code) == 1
    assert (code[0] / "functions" / "openapi.json").is_file()  # served at /v1/openapi.json
    for asset in (core[0], code[0]):
        assert not list(asset.rglob("__pycache__")) and not list(asset.rglob("*.pyc"))
        assert {p.name for p in asset.iterdir()} <= {"python", "functions"}


def test_without_bundling_the_function_asset_holds_only_the_functions_package(tmp_path: Path) -> None:
    app = App(outdir=str(tmp_path), context={"hd:bundling": False})
    stack = Stack(app, "Packaging", env={"account": "123456789012", "region": "eu-west-1"})
    lambda_.Function(stack, "Fn", runtime=packaging.LAMBDA_RUNTIME, code=packaging.function_code(stack),
                     handler="functions.auth.handler.lambda_handler")
    packaging.dependency_layer(stack, "Dependencies")
    app.synth()
    assets = _staged_assets(tmp_path)
    (code,) = [a for a in assets if (a / "functions").is_dir()]
    assert {p.name for p in code.iterdir()} == {"functions"}
    (requirements,) = [a / "requirements.txt" for a in assets if (a / "requirements.txt").is_file()]
    assert requirements.read_text().splitlines() == pinned_requirements()
