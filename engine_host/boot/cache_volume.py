"""The NVMe instance-store cache as a LUKS2 volume whose passphrase is a KMS data key.

First boot: KMS GenerateDataKey (64 random bytes, bound to this instance by its encryption context),
luksFormat + open with the plaintext on stdin, mkfs, then the ciphertext alone is written to
`cache_key_file` on the encrypted root volume, and the volume is mounted. Reboot: the stored
ciphertext is decrypted by KMS and the volume opened and mounted, never reformatted. After a
stop/start the instance store comes back blank, so the first-boot path runs again.

The key file is written only once the volume is formatted, opened and has a filesystem, and a stale
one is removed before formatting: a key file therefore always unlocks the LUKS header on the device,
and a boot interrupted anywhere is repaired by running it again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from engine_host.boot.config import EngineConfig
from engine_host.boot.imds import InstanceIdentity
from engine_host.boot.runner import CommandRunner
from hd_core.adapters.kms_keys import KMS_ERROR_ADVICE
from hd_core.errors import HdError, KeyUnavailable
from hd_core.files import write_file_atomically

KEY_FILE_FORMAT_VERSION = 1
DATA_KEY_BYTES = 64  # 512 bits of passphrase for a 512-bit aes-xts volume key
MOUNT_OPTIONS = "nodev,nosuid,noexec,noatime"
ENCRYPTION_PURPOSE = "engine-cache"

_T = TypeVar("_T")


class CacheKeyUnavailable(KeyUnavailable):
    """KMS would not produce the cache's data key (disabled, revoked, pending deletion, access denied)."""


class CacheVolumeFailed(HdError):
    """The cache volume is in a state boot will not touch, or its key file could not be written."""

    code = "HD_ERR_CACHE_VOLUME_FAILED"


class CacheState(StrEnum):
    """What boot did to the cache volume."""

    FORMATTED = "first_boot"
    REOPENED = "reopened"
    ALREADY_MOUNTED = "already_mounted"


@dataclass(frozen=True)
class StoredDataKey:
    """The contents of `cache_key_file`: the ciphertext data key and what it is bound to, nothing secret."""

    ciphertext: bytes
    key_arn: str
    encryption_context: Mapping[str, str]
    format_version: int = KEY_FILE_FORMAT_VERSION

    def to_json(self) -> str:
        """The key file's text."""
        return json.dumps({
            "format_version": self.format_version,
            "key_arn": self.key_arn,
            "encryption_context": dict(self.encryption_context),
            "ciphertext_dek": base64.b64encode(self.ciphertext).decode("ascii"),
        }, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StoredDataKey:
        """Parse a key file; raises `ValueError` if it is not one we wrote."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format_version") != KEY_FILE_FORMAT_VERSION:
            raise ValueError(f"not a version {KEY_FILE_FORMAT_VERSION} cache key file")
        context = data.get("encryption_context")
        if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
            raise ValueError("encryption_context is not a string map")
        try:
            ciphertext = base64.b64decode(str(data.get("ciphertext_dek", "")), validate=True)
        except binascii.Error as exc:
            raise ValueError("ciphertext_dek is not base64") from exc
        if not ciphertext:
            raise ValueError("ciphertext_dek is empty")
        return cls(ciphertext=ciphertext, key_arn=str(data.get("key_arn", "")), encryption_context=context)


def encryption_context(config: EngineConfig, instance_id: str) -> dict[str, str]:
    """The KMS encryption context binding a cache data key to this instance and organisation."""
    return {"hd:purpose": ENCRYPTION_PURPOSE, "hd:instance-id": instance_id, "hd:org-id": config.org_id}


def mapper_path(config: EngineConfig) -> str:
    """The opened cache volume's block device."""
    return f"/dev/mapper/{config.cache_mapper_name}"


# --- the commands -----------------------------------------------------------------------------------


def luks_format_argv(device: str) -> list[str]:
    """luksFormat with the passphrase on stdin."""
    # PBKDF2 at its 1000-iteration floor: the passphrase is 512 uniformly random bits from KMS, so
    # guessing it costs 2^512 tries however slow each one is. Argon2id's default (up to 1 GiB of
    # memory and ~2 s per unlock) would only delay every boot and risk the OOM killer on a busy host.
    return ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64",
            "--key-size", "512", "--hash", "sha256", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            "--key-file", "-", device]


def luks_open_argv(device: str, mapper_name: str) -> list[str]:
    """Open the LUKS2 volume with the passphrase on stdin."""
    return ["cryptsetup", "open", "--type", "luks2", "--key-file", "-", device, mapper_name]


def is_luks_argv(device: str) -> list[str]:
    """Exit 0 only if the device carries a LUKS2 header."""
    return ["cryptsetup", "isLuks", "--type", "luks2", device]


def mapper_status_argv(mapper_name: str) -> list[str]:
    """Exit 0 only if the mapping is active; prints its backing device."""
    return ["cryptsetup", "status", mapper_name]


def mkfs_argv(device: str) -> list[str]:
    """A fresh ext4; `-m 0` because a cache needs no blocks reserved for root."""
    return ["mkfs.ext4", "-q", "-m", "0", device]


def mount_argv(device: str, mount: Path) -> list[str]:
    """Mount the opened volume; nothing on it may be a device node, setuid or executable."""
    return ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, device, str(mount)]


def mounted_source_argv(mount: Path) -> list[str]:
    """Prints what is mounted at `mount`; exit 1 if nothing is."""
    return ["findmnt", "--noheadings", "--output", "SOURCE", "--mountpoint", str(mount)]


# --- KMS ----------------------------------------------------------------------------------------------


def describe_cache_key(kms: Any, key_arn: str) -> dict[str, Any]:
    """DescribeKey's `KeyMetadata` for the cache key; raises `CacheKeyUnavailable`."""
    response = _kms_call("DescribeKey", key_arn, lambda: kms.describe_key(KeyId=key_arn))
    metadata: dict[str, Any] = response["KeyMetadata"]
    return metadata


def require_usable_key(key_metadata: Mapping[str, Any]) -> None:
    """Raise `CacheKeyUnavailable` unless the key is enabled (KMS would refuse it, and the FAQ promises a stop)."""
    state = str(key_metadata.get("KeyState", "Unknown"))
    if state == "Enabled":
        return
    advice = {
        "Disabled": "re-enable the key (or configure the key that replaced it)",
        "PendingDeletion": "cancel the key's scheduled deletion and re-enable it",
        "PendingReplicaDeletion": "cancel the replica key's scheduled deletion",
    }.get(state, "make the key usable again (check its state in KMS)")
    raise CacheKeyUnavailable(
        f"the NVMe cache cannot be unlocked: KMS key {key_metadata.get('Arn', '?')} is {state}; {advice}, "
        "then boot again"
    )


def _kms_call(operation: str, key_arn: str, request: Callable[[], _T]) -> _T:
    try:
        return request()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        advice = KMS_ERROR_ADVICE.get(code, "check the key's state, its key policy and this role's permissions")
        raise CacheKeyUnavailable(
            f"the NVMe cache cannot be unlocked: KMS {operation} with key {key_arn} failed ({code}): {advice}"
        ) from None
    except BotoCoreError as exc:
        raise CacheKeyUnavailable(
            f"the NVMe cache cannot be unlocked: KMS {operation} with key {key_arn} could not be sent ({exc}): "
            "check the KMS VPC endpoint, security groups and region"
        ) from None


def _plaintext_key(response: dict[str, Any], operation: str, key_arn: str) -> bytearray:
    """The response's plaintext as a bytearray we can overwrite.

    Honest limit: boto3 hands the plaintext over as an immutable `bytes` (and botocore parsed it from
    a base64 string in the HTTP body). Python cannot overwrite those; they are freed when the
    response dict is dropped, which the caller does at once, but their memory is not zeroed. The
    bytearray is the only copy we control, and we overwrite it as soon as cryptsetup has read it.
    """
    key = bytearray(response.pop("Plaintext", b""))
    if len(key) != DATA_KEY_BYTES:
        _wipe(key)
        raise CacheKeyUnavailable(
            f"the NVMe cache cannot be unlocked: KMS {operation} with key {key_arn} returned a key that is not "
            f"{DATA_KEY_BYTES} bytes"
        )
    return key


def _wipe(key: bytearray) -> None:
    key[:] = bytes(len(key))  # same length: overwritten in place, not reallocated


# --- the volume ---------------------------------------------------------------------------------------


def prepare_cache_volume(
    config: EngineConfig, identity: InstanceIdentity, *, kms: Any, runner: CommandRunner, log: logging.Logger
) -> CacheState:
    """Make the cache volume open and mounted at `config.cache_mount`; idempotent.

    Raises `CacheKeyUnavailable`, `BootCommandFailed` or `CacheVolumeFailed`.
    """
    device = config.cache_device
    mounted = _mounted_source(runner, config.cache_mount)
    if mounted is not None:
        if mounted != mapper_path(config):
            raise CacheVolumeFailed(
                f"{mounted} is mounted at {config.cache_mount}, not the cache volume {mapper_path(config)}: "
                "unmount it (is cloud-init mounting the instance store?) and boot again"
            )
        _require_mapping_of(device, _mapped_device(runner, config), config)
        log.info("cache volume %s already open and mounted at %s; nothing to do", device, config.cache_mount)
        return CacheState.ALREADY_MOUNTED

    context = encryption_context(config, identity.instance_id)
    stored = _usable_stored_key(config, context, log)
    has_luks = runner.run(is_luks_argv(device), check=False).returncode == 0
    if stored is not None and has_luks:
        _reopen(config, stored, context, kms=kms, runner=runner, log=log)
        return CacheState.REOPENED
    if has_luks:
        log.warning("%s has a LUKS2 header but no usable stored key: formatting a new cache volume", device)
    elif config.cache_key_file.exists():
        log.warning("%s is blank (instance store after a stop/start): formatting a new cache volume", device)
    else:
        log.info("%s has no LUKS2 header (first boot): formatting a new cache volume", device)
    _format(config, context, kms=kms, runner=runner, log=log)
    return CacheState.FORMATTED


def _reopen(
    config: EngineConfig,
    stored: StoredDataKey,
    context: dict[str, str],
    *,
    kms: Any,
    runner: CommandRunner,
    log: logging.Logger,
) -> None:
    device = config.cache_device
    mapped = _mapped_device(runner, config)
    if mapped is None:
        key = _plaintext_key(
            _kms_call("Decrypt", config.kms_key_arn, lambda: kms.decrypt(
                CiphertextBlob=stored.ciphertext, EncryptionContext=context, KeyId=config.kms_key_arn)),
            "Decrypt", config.kms_key_arn,
        )
        try:
            runner.run(luks_open_argv(device, config.cache_mapper_name), stdin=key)
        finally:
            _wipe(key)
    else:
        _require_mapping_of(device, mapped, config)  # left open by an interrupted boot
    _mount(config, runner)
    log.info("cache volume %s unlocked with its stored data key and mounted at %s", device, config.cache_mount)


def _format(
    config: EngineConfig, context: dict[str, str], *, kms: Any, runner: CommandRunner, log: logging.Logger
) -> None:
    device = config.cache_device
    mapped = _mapped_device(runner, config)
    if mapped is not None:
        _require_mapping_of(device, mapped, config)
        runner.run(["cryptsetup", "close", config.cache_mapper_name])  # left open by an interrupted first boot
    # A key file for the old header must not survive into the window before the new one is written.
    try:
        config.cache_key_file.unlink(missing_ok=True)
    except OSError as exc:
        raise CacheVolumeFailed(f"cannot remove the stale cache key file {config.cache_key_file}: {exc}") from None
    response = _kms_call("GenerateDataKey", config.kms_key_arn, lambda: kms.generate_data_key(
        KeyId=config.kms_key_arn, NumberOfBytes=DATA_KEY_BYTES, EncryptionContext=context))
    ciphertext: bytes = response["CiphertextBlob"]
    key = _plaintext_key(response, "GenerateDataKey", config.kms_key_arn)
    del response
    try:
        runner.run(luks_format_argv(device), stdin=key)
        runner.run(luks_open_argv(device, config.cache_mapper_name), stdin=key)
    finally:
        _wipe(key)
    runner.run(mkfs_argv(mapper_path(config)))
    write_key_file(config.cache_key_file, StoredDataKey(ciphertext, config.kms_key_arn, context))
    _mount(config, runner)
    log.info("cache volume %s formatted (LUKS2 aes-xts-plain64, 512-bit key) and mounted at %s",
             device, config.cache_mount)


def _mount(config: EngineConfig, runner: CommandRunner) -> None:
    config.cache_mount.mkdir(mode=0o700, parents=True, exist_ok=True)
    runner.run(mount_argv(mapper_path(config), config.cache_mount))
    # mkfs makes the root 0755: cached table data must not be readable by other local users.
    config.cache_mount.chmod(0o700)


def _usable_stored_key(config: EngineConfig, context: Mapping[str, str], log: logging.Logger) -> StoredDataKey | None:
    """The stored key if it is for this key and instance; otherwise None, and the cache is rebuilt."""
    path = config.cache_key_file
    try:
        stored = StoredDataKey.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("cache key file %s is unusable (%s); the cache will be rebuilt", path, exc)
        return None
    if stored.key_arn != config.kms_key_arn:
        log.warning("cache key file %s was made with KMS key %s, the configuration names %s; "
                    "the cache will be rebuilt under the configured key", path, stored.key_arn, config.kms_key_arn)
        return None
    if dict(stored.encryption_context) != dict(context):
        log.warning("cache key file %s is bound to another instance or organisation; the cache will be rebuilt", path)
        return None
    return stored


def write_key_file(path: Path, stored: StoredDataKey) -> None:
    """Write the key file atomically and durably with mode 0600; raises `CacheVolumeFailed`."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file_atomically(path, stored.to_json().encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise CacheVolumeFailed(f"cannot write the cache key file {path}: {exc.strerror or exc}") from None


def _mounted_source(runner: CommandRunner, mount: Path) -> str | None:
    result = runner.run(mounted_source_argv(mount), check=False)
    if result.returncode != 0:
        return None
    lines = result.stdout.decode("utf-8", errors="replace").split()
    return lines[0] if lines else None


def _mapped_device(runner: CommandRunner, config: EngineConfig) -> str | None:
    """The device behind the active mapping `cache_mapper_name`, or None if it is not active."""
    result = runner.run(mapper_status_argv(config.cache_mapper_name), check=False)
    if result.returncode != 0:
        return None
    for line in result.stdout.decode("utf-8", errors="replace").splitlines():
        name, _, value = line.strip().partition(":")
        if name == "device":
            return value.strip()
    return ""


def _require_mapping_of(device: str, mapped: str | None, config: EngineConfig) -> None:
    if mapped != device:
        raise CacheVolumeFailed(
            f"{mapper_path(config)} is a mapping of {mapped or 'an unknown device'}, not of the cache device "
            f"{device}: close it and boot again"
        )
