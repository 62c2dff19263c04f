"""`npx cdk synth` and `python cdk/app.py` write the same template (offline, bundling off for speed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cdk.conftest import CDK_DIR, load_app_module

pytestmark = pytest.mark.slow


def _cdk_cli() -> str | None:
    return os.environ.get("HD_CDK_CLI") or shutil.which("cdk")


@pytest.mark.skipif(_cdk_cli() is None, reason="the AWS CDK CLI is not installed (npm install -g aws-cdk@2; "
                                               ".ci/run does this), so there is no CLI synth to compare with")
def test_cli_and_python_synth_write_the_same_template(tmp_path: Path) -> None:
    cli = _cdk_cli()
    assert cli is not None
    venv_bin = str(Path(sys.executable).parent)  # cdk.json runs `python3 cdk/app.py`: ours, not the system's
    subprocess.run(
        [cli, "synth", "--quiet", "-c", "hd:bundling=false", "-o", str(tmp_path / "cli")],
        cwd=CDK_DIR.parent, check=True, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
             "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"},
    )
    load_app_module().build_app({"hd:bundling": False}, outdir=str(tmp_path / "python")).synth()

    template = "HardenedDuck.template.json"
    from_cli = json.loads((tmp_path / "cli" / template).read_text())
    from_python = json.loads((tmp_path / "python" / template).read_text())
    assert from_cli == from_python
    assert "CDKMetadata" not in from_cli["Resources"]  # version reporting is off: nothing reported to AWS
