"""The LUKS2 cache volume: first boot, reboot, stop/start, re-runs and key failures.

KMS is moto (real GenerateDataKey/Decrypt with encryption contexts). moto 5.2 does not refuse a
disabled or pending-deletion key in GenerateDataKey/Decrypt, so KMS's own refusals are played by
botocore's Stubber; the boot sequence checks the key state from DescribeKey first (tested in
tests/integration/test_boot.py against moto's disable_key/schedule_key_deletion). Commands go to
`RecordingRunner`, which records exact argv and stdin and simulates cryptsetup/mkfs/mount state.
"""

from __future__ import annotations

import base64
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from engine_host.boot.cache_volume import (
    CacheKeyUnavailable,
    CacheState,
    CacheVolumeFailed,
    StoredDataKey,
    encryption_context,
    prepare_cache_volume,
    require_usable_key,
    write_key_file,
)
from engine_host.boot.config import EngineConfig
from engine_host.boot.runner import BootCommandFailed
from hd_core.errors import KeyUnavailable
from tests.unit.boot.fakes import IDENTITY, INSTANCE_ID, REGION, HostState, RecordingRunner, config_data

DEVICE = "/dev/nvme1n1"
MAPPER = "/dev/mapper/hd-cache"
log = logging.getLogger("test.boot")


@pytest.fixture
def kms(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


@pytest.fixture
def config(kms: Any, tmp_path: Path) -> EngineConfig:
    arn = kms.create_key(Description="hd cache")["KeyMetadata"]["Arn"]
    return EngineConfig.model_validate(config_data(
        kms_key_arn=arn, cache_mount=str(tmp_path / "cache"), cache_key_file=str(tmp_path / "root" / "cache-key.json"),
    ))


def _format_argv() -> tuple[str, ...]:
    return ("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64",
            "--key-size", "512", "--hash", "sha256", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            "--key-file", "-", DEVICE)


def _open_argv() -> tuple[str, ...]:
    return ("cryptsetup", "open", "--type", "luks2", "--key-file", "-", DEVICE, "hd-cache")


def _mount_argv(config: EngineConfig) -> tuple[str, ...]:
    return ("mount", "-t", "ext4", "-o", "nodev,nosuid,noexec,noatime", MAPPER, str(config.cache_mount))


def _prepare(config: EngineConfig, kms: Any, runner: RecordingRunner) -> CacheState:
    return prepare_cache_volume(config, IDENTITY, kms=kms, runner=runner, log=log)


def _stored(config: EngineConfig) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(config.cache_key_file.read_text())
    return data


def _first_boot(config: EngineConfig, kms: Any) -> RecordingRunner:
    runner = RecordingRunner()
    assert _prepare(config, kms, runner) is CacheState.FORMATTED
    return runner


# --- first boot -------------------------------------------------------------------------------------


def test_first_boot_probes_then_formats_opens_makes_a_filesystem_and_mounts(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    assert runner.argvs() == [
        ("findmnt", "--noheadings", "--output", "SOURCE", "--mountpoint", str(config.cache_mount)),
        ("cryptsetup", "isLuks", "--type", "luks2", DEVICE),
        ("cryptsetup", "status", "hd-cache"),
        _format_argv(),
        _open_argv(),
        ("mkfs.ext4", "-q", "-m", "0", MAPPER),
        _mount_argv(config),
    ]
    assert runner.state.mounts == {str(config.cache_mount): MAPPER}


def test_first_boot_feeds_the_kms_data_key_on_stdin_and_stores_only_its_ciphertext(
    config: EngineConfig, kms: Any
) -> None:
    runner = _first_boot(config, kms)
    fed = {call.argv[1]: call.stdin for call in runner.calls if call.stdin is not None}
    assert set(fed) == {"luksFormat", "open"} and fed["luksFormat"] == fed["open"]
    assert len(fed["open"] or b"") == 64
    stored = _stored(config)
    context = {"hd:purpose": "engine-cache", "hd:instance-id": INSTANCE_ID, "hd:org-id": "org_acme"}
    assert stored["encryption_context"] == context
    plaintext = kms.decrypt(CiphertextBlob=base64.b64decode(stored["ciphertext_dek"]), EncryptionContext=context,
                            KeyId=config.kms_key_arn)["Plaintext"]
    assert plaintext == fed["open"]


def test_the_key_never_appears_in_argv_or_the_key_file(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    key = runner.state.luks_passphrase
    assert key is not None
    spellings = [key, key.hex().encode(), base64.b64encode(key), base64.b64encode(key).rstrip(b"=")]
    argv_text = " ".join(" ".join(argv) for argv in runner.argvs()).encode()
    key_file = config.cache_key_file.read_bytes()
    for spelling in spellings:
        assert spelling not in argv_text
        assert spelling not in key_file


def test_the_key_file_holds_ciphertext_key_arn_context_and_version_only_with_mode_0600(
    config: EngineConfig, kms: Any
) -> None:
    _first_boot(config, kms)
    assert set(_stored(config)) == {"ciphertext_dek", "key_arn", "encryption_context", "format_version"}
    assert _stored(config)["key_arn"] == config.kms_key_arn
    assert _stored(config)["format_version"] == 1
    assert stat.S_IMODE(config.cache_key_file.stat().st_mode) == 0o600
    assert [p.name for p in config.cache_key_file.parent.iterdir()] == [config.cache_key_file.name]


def test_the_plaintext_buffer_is_overwritten_once_cryptsetup_has_read_it(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    buffers = [call.stdin_object for call in runner.calls if call.stdin_object is not None]
    assert len(buffers) == 2 and buffers[0] is buffers[1]
    assert isinstance(buffers[0], bytearray) and buffers[0] == bytearray(64)


def test_the_mounted_cache_is_private_to_its_owner(config: EngineConfig, kms: Any) -> None:
    _first_boot(config, kms)
    assert stat.S_IMODE(config.cache_mount.stat().st_mode) == 0o700


def test_a_failed_format_wipes_the_key_and_leaves_no_key_file(config: EngineConfig, kms: Any) -> None:
    runner = RecordingRunner(fail=["luksFormat"])
    with pytest.raises(BootCommandFailed, match=r"luksFormat.*simulated failure"):
        _prepare(config, kms, runner)
    assert not config.cache_key_file.exists()
    assert runner.calls[-1].stdin_object == bytearray(64)


def test_a_failed_mkfs_leaves_no_key_file_so_the_next_boot_formats_again(config: EngineConfig, kms: Any) -> None:
    runner = RecordingRunner(fail=["mkfs.ext4"])
    with pytest.raises(BootCommandFailed, match=r"^mkfs\.ext4 "):
        _prepare(config, kms, runner)
    assert not config.cache_key_file.exists()
    runner.fail.clear()
    runner.calls.clear()
    assert _prepare(config, kms, runner) is CacheState.FORMATTED
    assert runner.changing_argvs()[:2] == [("cryptsetup", "close", "hd-cache"), _format_argv()]


# --- reboot, stop/start, re-run ---------------------------------------------------------------------


def test_reboot_decrypts_the_stored_key_and_opens_without_format_or_mkfs(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    key = runner.state.luks_passphrase
    runner.state.reboot()
    runner.calls.clear()
    assert _prepare(config, kms, runner) is CacheState.REOPENED
    assert runner.changing_argvs() == [_open_argv(), _mount_argv(config)]
    assert runner.calls[-2].stdin == key
    assert runner.calls[-2].stdin_object == bytearray(64)


def test_a_blank_device_after_stop_start_is_formatted_with_a_new_key(
    config: EngineConfig, kms: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runner = _first_boot(config, kms)
    old_key, old_file = runner.state.luks_passphrase, config.cache_key_file.read_text()
    runner.state.stop_start()
    runner.calls.clear()
    with caplog.at_level(logging.INFO):
        assert _prepare(config, kms, runner) is CacheState.FORMATTED
    assert "is blank (instance store after a stop/start)" in caplog.text
    assert runner.changing_argvs()[:2] == [_format_argv(), _open_argv()]
    assert runner.state.luks_passphrase != old_key
    assert config.cache_key_file.read_text() != old_file


def test_a_rerun_on_the_mounted_volume_does_nothing(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    runner.calls.clear()
    with Stubber(kms):  # any KMS call would fail: nothing was queued
        assert _prepare(config, kms, runner) is CacheState.ALREADY_MOUNTED
    assert runner.changing_argvs() == []


def test_a_mapping_left_open_by_an_interrupted_reboot_is_just_mounted(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    runner.state.mounts.clear()  # opened, then the boot died before mount
    runner.calls.clear()
    with Stubber(kms):
        assert _prepare(config, kms, runner) is CacheState.REOPENED
    assert runner.changing_argvs() == [_mount_argv(config)]


def test_a_key_file_for_another_kms_key_rebuilds_the_cache_under_the_configured_key(
    config: EngineConfig, kms: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runner = _first_boot(config, kms)
    runner.state.reboot()
    other = kms.create_key()["KeyMetadata"]["Arn"]
    rekeyed = config.model_copy(update={"kms_key_arn": other})
    with caplog.at_level(logging.WARNING):
        assert _prepare(rekeyed, kms, runner) is CacheState.FORMATTED
    assert "the cache will be rebuilt under the configured key" in caplog.text
    assert _stored(rekeyed)["key_arn"] == other


def test_a_corrupt_key_file_rebuilds_the_cache(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    runner.state.reboot()
    config.cache_key_file.write_text("{not json")
    runner.calls.clear()
    assert _prepare(config, kms, runner) is CacheState.FORMATTED
    assert _format_argv() in runner.argvs()


def test_a_key_file_bound_to_another_instance_is_not_used(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    runner.state.reboot()
    stored = StoredDataKey.from_json(config.cache_key_file.read_text())
    foreign = {**stored.encryption_context, "hd:instance-id": "i-0ffffffffffffffff"}
    write_key_file(config.cache_key_file, StoredDataKey(stored.ciphertext, stored.key_arn, foreign))
    assert _prepare(config, kms, runner) is CacheState.FORMATTED


# --- refusals ---------------------------------------------------------------------------------------


def test_a_disabled_key_refused_by_kms_on_reboot_stops_with_what_to_do(config: EngineConfig, kms: Any) -> None:
    runner = _first_boot(config, kms)
    runner.state.reboot()
    runner.calls.clear()
    with Stubber(kms) as stub, pytest.raises(CacheKeyUnavailable) as caught:
        stub.add_client_error("decrypt", service_error_code="DisabledException")
        _prepare(config, kms, runner)
    message = str(caught.value)
    assert caught.value.code == "HD_ERR_KEY_UNAVAILABLE" and isinstance(caught.value, KeyUnavailable)
    assert message.startswith("the NVMe cache cannot be unlocked: KMS Decrypt with key arn:aws:kms:")
    assert "(DisabledException): the key is disabled: enable it" in message
    assert runner.changing_argvs() == []


def test_a_key_pending_deletion_refused_by_kms_on_first_boot_formats_nothing(config: EngineConfig, kms: Any) -> None:
    runner = RecordingRunner()
    with Stubber(kms) as stub, pytest.raises(CacheKeyUnavailable, match="cancel a scheduled deletion"):
        stub.add_client_error("generate_data_key", service_error_code="KMSInvalidStateException")
        _prepare(config, kms, runner)
    assert runner.changing_argvs() == []


def test_access_denied_points_at_the_key_policy(config: EngineConfig, kms: Any) -> None:
    with Stubber(kms) as stub, pytest.raises(CacheKeyUnavailable, match="check the key policy"):
        stub.add_client_error("generate_data_key", service_error_code="AccessDeniedException")
        _prepare(config, kms, RecordingRunner())


@pytest.mark.parametrize(("state", "advice"), [
    ("Disabled", "re-enable the key"),
    ("PendingDeletion", "cancel the key's scheduled deletion"),
    ("PendingImport", "make the key usable again"),
])
def test_a_key_that_is_not_enabled_is_unusable(state: str, advice: str) -> None:
    with pytest.raises(CacheKeyUnavailable, match=rf"cannot be unlocked: KMS key arn:x is {state}; {advice}"):
        require_usable_key({"Arn": "arn:x", "KeyState": state})


def test_an_enabled_key_is_usable() -> None:
    require_usable_key({"Arn": "arn:x", "KeyState": "Enabled"})


def test_something_else_mounted_at_the_cache_mount_is_refused(config: EngineConfig, kms: Any) -> None:
    runner = RecordingRunner(HostState(mounts={str(config.cache_mount): DEVICE}))
    with pytest.raises(CacheVolumeFailed, match=f"{DEVICE} is mounted at .*not the cache volume {MAPPER}"):
        _prepare(config, kms, runner)
    assert runner.changing_argvs() == []


def test_a_mapping_of_another_device_is_refused(config: EngineConfig, kms: Any) -> None:
    runner = RecordingRunner(HostState(mapped={"hd-cache": "/dev/nvme2n1"}))
    with pytest.raises(CacheVolumeFailed, match=r"is a mapping of /dev/nvme2n1, not of the cache device /dev/nvme1n1"):
        _prepare(config, kms, runner)
    assert runner.changing_argvs() == []


# --- key file ---------------------------------------------------------------------------------------


def test_the_encryption_context_binds_purpose_instance_and_organisation(config: EngineConfig) -> None:
    assert encryption_context(config, "i-0abc") == {
        "hd:purpose": "engine-cache", "hd:instance-id": "i-0abc", "hd:org-id": "org_acme"}


def test_a_key_file_round_trips(tmp_path: Path) -> None:
    stored = StoredDataKey(b"\x01\x02ciphertext", "arn:aws:kms:eu-west-1:123456789012:key/k", {"a": "b"})
    write_key_file(tmp_path / "k.json", stored)
    assert StoredDataKey.from_json((tmp_path / "k.json").read_text()) == stored


def test_writing_a_key_file_replaces_the_old_one_atomically(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text("old")
    path.chmod(0o644)
    write_key_file(path, StoredDataKey(b"c", "arn", {}))
    assert json.loads(path.read_text())["ciphertext_dek"] == "Yw=="
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


def test_an_unwritable_key_file_is_a_cache_volume_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheVolumeFailed, match="cannot write the cache key file"):
        write_key_file(blocker / "k.json", StoredDataKey(b"c", "arn", {}))


@pytest.mark.parametrize("text", [
    "[]", '{"format_version": 2}', '{"format_version": 1, "encryption_context": {}, "ciphertext_dek": "%%"}',
    '{"format_version": 1, "encryption_context": {}, "ciphertext_dek": ""}',
    '{"format_version": 1, "encryption_context": {"a": 1}, "ciphertext_dek": "Yw=="}',
])
def test_a_key_file_we_did_not_write_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        StoredDataKey.from_json(text)
