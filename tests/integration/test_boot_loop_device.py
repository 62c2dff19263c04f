"""The cache volume for real: our exact cryptsetup/mkfs/mount argv against the real tools, KMS from moto.

The loop-device run needs root, cryptsetup on PATH and device-mapper (/dev/mapper/control); where the
machine lacks one of them it is skipped with the reason. The header check needs only the cryptsetup
binary: luksFormat and `open --test-passphrase` work on a plain image file without device-mapper.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from engine_host.boot.cache_volume import (
    CacheState,
    luks_format_argv,
    luks_open_argv,
    mapper_path,
    prepare_cache_volume,
)
from engine_host.boot.config import EngineConfig
from engine_host.boot.runner import SubprocessRunner
from tests.unit.boot.fakes import IDENTITY, REGION, config_data

log = logging.getLogger("test.boot.loop")
IMAGE_BYTES = 64 * 2**20


def _loop_device_unavailable() -> str | None:
    if os.geteuid() != 0:
        return f"needs root to attach a loop device and open dm-crypt (running as uid {os.geteuid()})"
    for tool in ("cryptsetup", "losetup", "mkfs.ext4", "mount", "umount", "findmnt"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if not Path("/dev/mapper/control").exists():
        return "/dev/mapper/control does not exist: no device-mapper in this kernel or container"
    # libdevmapper creates the control node itself when missing, so the node alone proves nothing.
    if "device-mapper" not in Path("/proc/misc").read_text():
        return "/dev/mapper/control exists but the kernel has no device-mapper (not in /proc/misc; load dm_mod)"
    return None


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def kms(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


def test_real_cryptsetup_accepts_our_format_and_open_argv(tmp_path: Path) -> None:
    if shutil.which("cryptsetup") is None:
        reason = "cryptsetup is not on PATH"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    image = tmp_path / "header.img"
    with image.open("wb") as handle:
        handle.truncate(32 * 2**20)
    key = bytearray(os.urandom(64))
    runner = SubprocessRunner(timeout_seconds=60)
    runner.run(luks_format_argv(str(image)), stdin=key)
    test_open = luks_open_argv(str(image), "hd-unused")
    test_open.insert(2, "--test-passphrase")
    assert runner.run(test_open, stdin=key).returncode == 0
    assert runner.run(test_open, stdin=key[:-1], check=False).returncode == 2  # one byte short: wrong key
    dump = runner.run(["cryptsetup", "luksDump", str(image)]).stdout.decode()
    assert "Version:       \t2" in dump
    assert "cipher: aes-xts-plain64" in dump
    assert "Key:        512 bits" in dump and "PBKDF:      pbkdf2" in dump


def test_boot_formats_reopens_and_reruns_on_a_real_loop_device(kms: Any, tmp_path: Path) -> None:
    reason = _loop_device_unavailable()
    if reason is not None:
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    image = tmp_path / "nvme.img"
    with image.open("wb") as handle:
        handle.truncate(IMAGE_BYTES)
    loop = _run("losetup", "--find", "--show", str(image))
    config = EngineConfig.model_validate(config_data(
        kms_key_arn=kms.create_key()["KeyMetadata"]["Arn"], cache_device=loop,
        cache_mapper_name=f"hd-test-{os.getpid()}", cache_mount=str(tmp_path / "cache"),
        cache_key_file=str(tmp_path / "root" / "cache-key.json"),
    ))
    runner = SubprocessRunner(timeout_seconds=120)
    try:
        assert prepare_cache_volume(config, IDENTITY, kms=kms, runner=runner, log=log) is CacheState.FORMATTED
        (config.cache_mount / "table.parquet").write_bytes(b"cached bytes")
        options = _run("findmnt", "--noheadings", "--output", "OPTIONS", "--mountpoint", str(config.cache_mount))
        assert {"nodev", "nosuid", "noexec", "noatime"} <= set(options.split(","))
        assert prepare_cache_volume(config, IDENTITY, kms=kms, runner=runner, log=log) is CacheState.ALREADY_MOUNTED

        _run("umount", str(config.cache_mount))
        _run("cryptsetup", "close", config.cache_mapper_name)  # what a reboot leaves: header and filesystem
        assert prepare_cache_volume(config, IDENTITY, kms=kms, runner=runner, log=log) is CacheState.REOPENED
        assert (config.cache_mount / "table.parquet").read_bytes() == b"cached bytes"

        stored = json.loads(config.cache_key_file.read_text())
        plaintext = kms.decrypt(CiphertextBlob=base64.b64decode(stored["ciphertext_dek"]),
                                EncryptionContext=stored["encryption_context"])["Plaintext"]
        assert plaintext not in image.read_bytes()
    finally:
        subprocess.run(["umount", str(config.cache_mount)], capture_output=True, check=False)
        subprocess.run(["cryptsetup", "close", config.cache_mapper_name], capture_output=True, check=False)
        subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False)
    assert not Path(mapper_path(config)).exists()
