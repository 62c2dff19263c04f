"""Lambda code and layers, built by local bundling (a copy, or `pip install` for arm64 wheels), never Docker.

Three assets: the dependency layer (the Lambdas' third-party runtime packages, installed as
manylinux aarch64 CPython 3.12 wheels so nothing is compiled here), the `hd_core` layer, and one
code asset with the `functions/` package that every function shares (handler
`functions.<name>.handler.lambda_handler`). With context `hd:bundling` false (the tests) nothing is
built: the assets are the source directories themselves, and the dependency layer is a folder
holding only the requirements it would install.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from hd_cdk.constants import CONTEXT_BUNDLING

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR: Final = REPO_ROOT / "functions"
CORE_PACKAGE_DIR: Final = REPO_ROOT / "layers" / "core" / "hd_core"

LAMBDA_RUNTIME: Final = lambda_.Runtime.PYTHON_3_12
LAMBDA_ARCHITECTURE: Final = lambda_.Architecture.ARM_64
LAYER_PYTHON_VERSION: Final = "3.12"
# Lambda's Python 3.12 runtime is Amazon Linux 2023 (glibc 2.34): every manylinux tag up to that loads.
# 2014 first, as asked for; the newer tags let pip take packages that stopped publishing 2014 wheels.
WHEEL_PLATFORMS: Final[tuple[str, ...]] = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64")

# What the control-plane Lambdas import at run time beyond the standard library and hd_core, found by
# importing every handler and adapter: boto3/botocore come with the Lambda runtime; DuckDB, sqlglot and
# pyarrow are the engine's and are never imported by a handler. `[tracer]` brings aws-xray-sdk (the
# handlers trace with X-Ray); tzdata because hd_core.policy_eval uses zoneinfo and the runtime ships
# no time zone database.
RUNTIME_REQUIREMENTS: Final[tuple[str, ...]] = (
    "pydantic",
    "pydantic-settings",
    "aws-lambda-powertools[tracer]",
    "pyjwt[crypto]",
    "cryptography",
    "argon2-cffi",
    "pyotp",
    "tzdata",
)

# The `[otel]` extra (functions/shared/otel_spans.py, imported only when HD_OTEL_ENDPOINT is set), always in the
# dependency layer: measured for arm64 cp312, it takes the layer from 65 to 72 MB unpacked (28.0 to 29.8 MB
# zipped; Lambda allows 250 MB), so turning tracing on (context hd:otelEndpoint, tracing.py) changes no asset.
OTEL_REQUIREMENTS: Final[tuple[str, ...]] = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")
# The dependency layer every control-plane function carries.
LAYER_REQUIREMENTS: Final[tuple[str, ...]] = RUNTIME_REQUIREMENTS + OTEL_REQUIREMENTS

# What shadow replay adds (issue 18), in a layer of its own so the other functions do not carry it: the
# query-set parser and the result comparison parse SQL with sqlglot (pure Python), and the replay talks to
# PostgreSQL and to the engine over the Postgres wire with psycopg (binary wheels: no libpq on Lambda).
SHADOW_REQUIREMENTS: Final[tuple[str, ...]] = ("sqlglot", "psycopg[binary]")

# What the GDPR forget worker adds (issue 20), in a layer only it carries: it rewrites Parquet table files with
# pyarrow (hd_core.erasure imports it in the worker path only, so the forget API function does not need it).
# Measured for arm64 cp312 (pyarrow 26.0.1, no numpy needed): 151 MB unpacked, 51.7 MB zipped; with the
# dependency layer (72 MB) and the code the worker stays under Lambda's 250 MB unpacked limit.
ERASURE_REQUIREMENTS: Final[tuple[str, ...]] = ("pyarrow",)

# Never shipped: byte code is rebuilt for the runtime's interpreter, and caches are local state.
_COPY_IGNORE: Final = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".mypy_cache", ".pytest_cache")
# CDK only uses the image when local bundling declines; ours never does, so no Docker image is pulled.
_NO_DOCKER_IMAGE: Final = "unused-local-bundling-only"


class BundlingFailed(RuntimeError):
    """A local bundling step failed; the message says which and why."""

    code = "HD_ERR_BUNDLING_FAILED"


def bundling_enabled(scope: Construct) -> bool:
    """Whether context `hd:bundling` asks for built assets (the default) or source folders (tests)."""
    value = scope.node.try_get_context(CONTEXT_BUNDLING)
    if value is None or isinstance(value, bool):
        return value is None or value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"context {CONTEXT_BUNDLING} must be true or false, got {value!r}")


def pinned_requirements(requirements: Sequence[str] = LAYER_REQUIREMENTS) -> list[str]:
    """Each requirement pinned to the version installed here (what the tests ran with); unpinned if absent."""
    pinned = []
    for requirement in requirements:
        name = requirement.split("[", 1)[0]
        try:
            pinned.append(f"{requirement}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(requirement)
    return pinned


@jsii.implements(ILocalBundling)
class PipLayerBundling:
    """Installs requirements as Lambda arm64 CPython 3.12 wheels into `<output>/python` (binary wheels only)."""

    def __init__(self, requirements: Sequence[str], *, python: str = sys.executable) -> None:
        if not requirements:
            raise ValueError("a dependency layer needs at least one requirement")
        self.requirements = tuple(requirements)
        self.python = python

    def command(self, output_dir: str) -> list[str]:
        """The pip argv that builds the layer in `output_dir`."""
        platforms = [argument for platform in WHEEL_PLATFORMS for argument in ("--platform", platform)]
        return [
            self.python, "-m", "pip", "install",
            *platforms,
            # Only wheels: an sdist would be compiled for this machine, not for Lambda's arm64.
            "--only-binary=:all:",
            "--python-version", LAYER_PYTHON_VERSION,
            "--implementation", "cp",
            "--target", str(Path(output_dir) / "python"),
            "--no-compile",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            *self.requirements,
        ]

    def asset_hash(self) -> str:
        """What the layer depends on: requirements, platforms and Python version (pip itself is not run to hash)."""
        identity = "\n".join((LAYER_PYTHON_VERSION, *WHEEL_PLATFORMS, *self.requirements))
        return hashlib.sha256(identity.encode()).hexdigest()

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_options: Any) -> bool:
        """Run pip; raises `BundlingFailed` with pip's output when it fails."""
        argv = self.command(output_dir)
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our own argv
        if result.returncode != 0:
            raise BundlingFailed(
                f"the dependency layer could not be built (pip exited {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return True


@jsii.implements(ILocalBundling)
class CopyTreeBundling:
    """Copies a source folder to `<output>/<target>`, without byte code or caches."""

    def __init__(self, source: Path, target: str) -> None:
        if not source.is_dir():
            raise ValueError(f"bundling source {source} is not a directory")
        self.source = source
        self.target = target

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_options: Any) -> bool:
        """Copy the tree; raises `BundlingFailed` if it cannot."""
        try:
            shutil.copytree(self.source, Path(output_dir) / self.target, ignore=_COPY_IGNORE, dirs_exist_ok=True)
        except OSError as exc:
            raise BundlingFailed(f"{self.source} could not be copied into the asset: {exc}") from exc
        return True


def _local(bundler: PipLayerBundling | CopyTreeBundling) -> BundlingOptions:
    return BundlingOptions(image=DockerImage.from_registry(_NO_DOCKER_IMAGE), local=bundler)


def function_code(scope: Construct) -> lambda_.Code:
    """The `functions/` package, as one code asset every control-plane function shares."""
    if not bundling_enabled(scope):
        # The asset root must hold the `functions` folder itself, so the handler path resolves; `*` does
        # not match dot-folders (.venv, .git), hence `.*`.
        return lambda_.Code.from_asset(
            str(REPO_ROOT), exclude=["*", ".*", "!functions", "!functions/**", "**/__pycache__", "**/*.pyc"]
        )
    return lambda_.Code.from_asset(
        str(FUNCTIONS_DIR),
        asset_hash_type=AssetHashType.SOURCE,
        bundling=_local(CopyTreeBundling(FUNCTIONS_DIR, "functions")),
    )


def core_layer(scope: Construct, construct_id: str) -> lambda_.LayerVersion:
    """The `hd_core` package as a layer (`python/hd_core`)."""
    if bundling_enabled(scope):
        code = lambda_.Code.from_asset(
            str(CORE_PACKAGE_DIR),
            asset_hash_type=AssetHashType.SOURCE,
            bundling=_local(CopyTreeBundling(CORE_PACKAGE_DIR, "python/hd_core")),
        )
    else:
        code = lambda_.Code.from_asset(str(CORE_PACKAGE_DIR.parent), exclude=["**/__pycache__", "**/*.pyc"])
    return _layer(scope, construct_id, code, "hd_core: the control plane's domain code and adapters")


def dependency_layer(
    scope: Construct,
    construct_id: str,
    requirements: Sequence[str] = LAYER_REQUIREMENTS,
    description: str = "Third-party runtime packages of the control-plane Lambdas",
) -> lambda_.LayerVersion:
    """The Lambdas' third-party packages as a layer, pinned to the versions installed here."""
    bundler = PipLayerBundling(pinned_requirements(requirements))
    if bundling_enabled(scope):
        code = lambda_.Code.from_asset(
            str(Path(__file__).resolve().parent),  # unread: the custom hash stands in for the source
            asset_hash_type=AssetHashType.CUSTOM,
            asset_hash=bundler.asset_hash(),
            bundling=_local(bundler),
        )
    else:
        # One folder per requirement set, reused by every synth (named by content, so never stale).
        folder = Path(tempfile.gettempdir()) / f"hd-dependency-layer-{bundler.asset_hash()[:16]}"
        folder.mkdir(exist_ok=True)
        (folder / "requirements.txt").write_text("\n".join(bundler.requirements) + "\n", encoding="utf-8")
        code = lambda_.Code.from_asset(str(folder))
    return _layer(scope, construct_id, code, description)


def _layer(scope: Construct, construct_id: str, code: lambda_.Code, description: str) -> lambda_.LayerVersion:
    return lambda_.LayerVersion(
        scope,
        construct_id,
        code=code,
        compatible_runtimes=[LAMBDA_RUNTIME],
        compatible_architectures=[LAMBDA_ARCHITECTURE],
        description=description,
    )
