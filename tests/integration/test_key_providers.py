"""KeyProvider contract, run against the local key file and against KMS (moto)."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import jwt
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.errors import InvalidRequest, KeyUnavailable
from hd_core.ports import KeyProvider

CONTEXT = {"org_id": "org_acme", "purpose": "cache"}


@dataclass
class ProviderUnderTest:
    provider: KeyProvider
    make_unusable: Callable[[], None]  # what "the key was disabled" means for this provider



@dataclass
class KmsKeys:
    client: Any
    jwt_current: str
    jwt_previous: str
    checkpoint: str
    data: str

    def provider(self) -> KmsKeyProvider:
        return KmsKeyProvider(self.client, jwt_key_ids=[self.jwt_current, self.jwt_previous],
                              checkpoint_key_id=self.checkpoint, data_key_id=self.data)


def _create_key(client: Any, spec: str, usage: str) -> str:
    key_id: str = client.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]
    return key_id


def _enforce_key_state(client: Any) -> None:
    """Make the moto client refuse disabled keys, as KMS does (moto 5.2 signs and decrypts with them anyway)."""
    observer = boto3.client("kms", region_name="us-east-1")

    def refuse_disabled(model: Any, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        body = json.loads(params.get("body") or b"{}")
        key_id = body.get("KeyId")
        # Key management works on a disabled key in KMS too; only its use is refused.
        if key_id is None or model.name in ("DisableKey", "DescribeKey", "ScheduleKeyDeletion", "CancelKeyDeletion",
                                            "ListResourceTags"):
            return None
        if observer.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] != "Disabled":
            return None
        error = {"Code": "DisabledException", "Message": f"{key_id} is disabled."}
        return AWSResponse("https://kms", 400, {}, None), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}

    client.meta.events.register("before-call.kms", refuse_disabled)


@pytest.fixture
def kms_keys(aws_credentials: None) -> Iterator[KmsKeys]:
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        _enforce_key_state(client)
        yield KmsKeys(
            client,
            jwt_current=_create_key(client, "RSA_2048", "SIGN_VERIFY"),
            jwt_previous=_create_key(client, "RSA_2048", "SIGN_VERIFY"),
            checkpoint=_create_key(client, "ECC_NIST_P256", "SIGN_VERIFY"),
            data=_create_key(client, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        )


@pytest.fixture(params=["local_key_file", "kms"])
def under_test(request: pytest.FixtureRequest, tmp_path: Path) -> ProviderUnderTest:
    if request.param == "local_key_file":
        path = tmp_path / "state" / "dev-keys.json"

        def damage_file() -> None:
            path.write_text('{"format": 1, "jwt_keys": "gone"}')

        return ProviderUnderTest(LocalKeyFile(path), damage_file)
    kms: KmsKeys = request.getfixturevalue("kms_keys")

    def disable_all() -> None:
        for key_id in (kms.jwt_current, kms.jwt_previous, kms.checkpoint, kms.data):
            kms.client.disable_key(KeyId=key_id)

    return ProviderUnderTest(kms.provider(), disable_all)


def _compact_jws(provider: KeyProvider, claims: dict[str, object]) -> str:
    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = {"alg": "RS256", "typ": "JWT", "kid": provider.jwt_signing_kid()}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(provider.sign_jwt(signing_input.encode('ascii')))}"


def _compact_jws_with(provider: KeyProvider, kid: str, claims: dict[str, object]) -> str:
    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(provider.sign_jwt_with(kid, signing_input.encode('ascii')))}"


def _claims() -> dict[str, object]:
    now = datetime.now(UTC)
    return {"sub": "usr_1", "iss": "hd", "aud": "hd-api", "iat": int(now.timestamp()),
            "exp": int((now + timedelta(minutes=5)).timestamp())}


# --- the contract ----------------------------------------------------------------------------------


def test_a_jwt_signed_by_the_provider_verifies_with_pyjwt(under_test: ProviderUnderTest) -> None:
    provider = under_test.provider
    token = _compact_jws(provider, _claims())
    public_keys = provider.jwt_public_keys()
    assert public_keys[0].kid == provider.jwt_signing_kid() == jwt.get_unverified_header(token)["kid"]
    decoded = jwt.decode(token, key=public_keys[0].public_pem, algorithms=["RS256"], audience="hd-api",
                         options={"require": ["exp", "iat", "iss", "aud"]})
    assert decoded["sub"] == "usr_1"


def test_a_jwt_with_altered_claims_does_not_verify(under_test: ProviderUnderTest) -> None:
    provider = under_test.provider
    header, _, signature = _compact_jws(provider, _claims()).split(".")
    forged_claims = base64.urlsafe_b64encode(json.dumps({**_claims(), "sub": "usr_owner"}).encode()).rstrip(b"=")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{forged_claims.decode()}.{signature}", key=provider.jwt_public_keys()[0].public_pem,
                   algorithms=["RS256"], audience="hd-api")


def test_a_checkpoint_signature_verifies_and_a_tampered_message_does_not(under_test: ProviderUnderTest) -> None:
    provider = under_test.provider
    message = b'{"chain_id":"org_acme","size":10}'
    signature = provider.sign_checkpoint(message)
    key_id = provider.checkpoint_key_id()
    assert provider.verify_checkpoint(key_id, message, signature)
    assert not provider.verify_checkpoint(key_id, message.replace(b"10", b"11"), signature)
    assert not provider.verify_checkpoint("some-other-key", message, signature)
    assert not provider.verify_checkpoint(key_id, message, b"not a DER signature")


def test_a_data_key_round_trips_under_its_context(under_test: ProviderUnderTest) -> None:
    provider = under_test.provider
    data_key = provider.generate_data_key(CONTEXT)
    assert len(data_key.plaintext) == 32 and data_key.ciphertext != data_key.plaintext
    assert provider.decrypt_data_key(data_key.ciphertext, dict(reversed(CONTEXT.items()))) == data_key.plaintext


def test_a_data_key_does_not_decrypt_under_another_context(under_test: ProviderUnderTest) -> None:
    provider = under_test.provider
    data_key = provider.generate_data_key(CONTEXT)
    with pytest.raises(KeyUnavailable, match="context"):
        provider.decrypt_data_key(data_key.ciphertext, {**CONTEXT, "org_id": "org_evil"})
    with pytest.raises(KeyUnavailable):
        provider.decrypt_data_key(data_key.ciphertext, {})


def test_unusable_key_material_raises_key_unavailable_and_verifies_nothing(under_test: ProviderUnderTest) -> None:
    provider = under_test.provider
    message = b"checkpoint"
    key_id, signature = provider.checkpoint_key_id(), provider.sign_checkpoint(message)
    data_key = provider.generate_data_key(CONTEXT)
    under_test.make_unusable()
    assert not provider.verify_checkpoint(key_id, message, signature)
    for operation in (
        lambda: provider.sign_jwt(b"header.claims"),
        lambda: provider.sign_checkpoint(message),
        lambda: provider.generate_data_key(CONTEXT),
        lambda: provider.decrypt_data_key(data_key.ciphertext, CONTEXT),
    ):
        with pytest.raises(KeyUnavailable):
            operation()


# --- the local key file ----------------------------------------------------------------------------


def test_the_local_key_file_is_created_on_first_use_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "dev-keys.json"
    keys = LocalKeyFile(path)
    assert not path.exists()
    keys.jwt_signing_kid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert len(document["jwt_keys"]) == 1 and len(base64.b64decode(document["master_key"])) == 32
    assert [p.name for p in tmp_path.iterdir()] == ["dev-keys.json"]  # no temporary file left behind


def test_the_local_key_file_warns_once_that_it_is_for_development_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hd_core.adapters.local_keys"):
        keys = LocalKeyFile(tmp_path / "dev-keys.json")
        keys.jwt_signing_kid()
        keys.sign_checkpoint(b"x")
        LocalKeyFile(tmp_path / "dev-keys.json").checkpoint_key_id()
    warnings = [r.getMessage() for r in caplog.records if "DEV ONLY" in r.getMessage()]
    assert len(warnings) == 1 and "not in KMS" in warnings[0]


def test_a_second_instance_uses_the_same_keys(tmp_path: Path) -> None:
    first, second = LocalKeyFile(tmp_path / "k.json"), LocalKeyFile(tmp_path / "k.json")
    signature = first.sign_checkpoint(b"m")
    assert second.verify_checkpoint(first.checkpoint_key_id(), b"m", signature)
    data_key = first.generate_data_key(CONTEXT)
    assert second.decrypt_data_key(data_key.ciphertext, CONTEXT) == data_key.plaintext


def test_another_key_file_cannot_vouch_for_this_one(tmp_path: Path) -> None:
    mine, theirs = LocalKeyFile(tmp_path / "mine.json"), LocalKeyFile(tmp_path / "theirs.json")
    assert mine.checkpoint_key_id() != theirs.checkpoint_key_id()
    assert mine.jwt_signing_kid() != theirs.jwt_signing_kid()
    forged = theirs.sign_checkpoint(b"m")
    assert not mine.verify_checkpoint(mine.checkpoint_key_id(), b"m", forged)
    with pytest.raises(KeyUnavailable):
        mine.decrypt_data_key(theirs.generate_data_key(CONTEXT).ciphertext, CONTEXT)


def test_a_new_jwt_key_gets_a_file_of_its_own_and_the_key_file_is_never_rewritten(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "dev-keys.json")
    first = keys.jwt_signing_kid()
    before = (tmp_path / "dev-keys.json").read_bytes()
    second = keys.create_jwt_key()
    third = keys.create_jwt_key()
    assert len({first, second, third}) == 3
    assert (tmp_path / "dev-keys.json").read_bytes() == before
    assert keys.configured_jwt_kids() == [first]  # what seeds a ring: the key file's own keys
    for kid in (second, third):
        path = tmp_path / "jwt" / f"{kid}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = _compact_jws_with(keys, kid, _claims())
        claims = jwt.decode(token, key=keys.jwt_public_pem(kid), algorithms=["RS256"], audience="hd-api")
        assert claims["sub"] == "usr_1"


def test_a_jwt_key_made_by_another_process_is_usable_here(tmp_path: Path) -> None:
    reader, rotator = LocalKeyFile(tmp_path / "k.json"), LocalKeyFile(tmp_path / "k.json")
    reader.jwt_signing_kid()
    new_kid = rotator.create_jwt_key()
    token = _compact_jws_with(rotator, new_kid, _claims())
    assert jwt.decode(token, key=reader.jwt_public_pem(new_kid), algorithms=["RS256"], audience="hd-api")


def test_a_retired_local_jwt_key_is_disabled_then_deleted_only_after_its_date(tmp_path: Path) -> None:
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    keys = LocalKeyFile(tmp_path / "k.json", now=lambda: clock[0])
    kid = keys.create_jwt_key()
    with pytest.raises(KeyUnavailable, match="not disabled"):
        keys.schedule_jwt_key_deletion(kid, 7)
    keys.disable_jwt_key(kid)
    keys.disable_jwt_key(kid)  # again: harmless
    with pytest.raises(KeyUnavailable, match="disabled"):
        keys.sign_jwt_with(kid, b"h.c")
    with pytest.raises(KeyUnavailable, match="disabled"):
        keys.jwt_public_pem(kid)
    delete_after = keys.schedule_jwt_key_deletion(kid, 7)
    assert delete_after == clock[0] + timedelta(days=7)
    clock[0] += timedelta(days=6)
    with pytest.raises(KeyUnavailable, match="may not be deleted before"):
        keys.purge_jwt_key(kid)
    assert (tmp_path / "jwt" / f"{kid}.json").exists()
    clock[0] += timedelta(days=1)
    keys.purge_jwt_key(kid)
    assert not (tmp_path / "jwt" / f"{kid}.json").exists()
    assert keys.jwt_signing_kid() != kid  # the key file's own key is untouched


def test_a_kid_that_is_not_a_local_key_id_never_reaches_the_file_system(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "k.json")
    (tmp_path / "secret.json").write_text("{}")
    for kid in ("../secret", "local-jwt-../../x", "/etc/passwd", "local-jwt-" + "0" * 23):
        with pytest.raises(KeyUnavailable, match="not a local JWT key id"):
            keys.jwt_public_pem(kid)
    with pytest.raises(KeyUnavailable, match="not in"):
        keys.jwt_public_pem("local-jwt-" + "0" * 24)


def _first_use_in_another_process(path: str) -> tuple[str, str]:
    keys = LocalKeyFile(Path(path))
    return keys.jwt_signing_kid(), keys.checkpoint_key_id()


def test_processes_racing_to_create_the_key_file_end_with_one_file(tmp_path: Path) -> None:
    path = tmp_path / "dev-keys.json"
    with ProcessPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_first_use_in_another_process, [str(path)] * 8))
    assert len(set(results)) == 1
    assert results[0] == (LocalKeyFile(path).jwt_signing_kid(), LocalKeyFile(path).checkpoint_key_id())
    assert os.listdir(tmp_path) == ["dev-keys.json"]


def test_a_damaged_key_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "dev-keys.json"
    path.write_text("not json")
    keys = LocalKeyFile(path)
    with pytest.raises(KeyUnavailable, match=r"damaged.*restore it from a backup"):
        keys.jwt_signing_kid()
    assert not keys.verify_checkpoint("any", b"m", b"s")
    assert path.read_text() == "not json"


def test_a_key_file_that_must_exist_is_never_made_anew(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "keys" / "dev-keys.json", create_missing=False)
    with pytest.raises(KeyUnavailable, match=r"missing; restore it from a backup"):
        keys.check()
    with pytest.raises(KeyUnavailable, match="missing"):
        keys.create_jwt_key()
    assert not (tmp_path / "keys").exists()


def test_foreign_data_key_ciphertext_is_refused(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "k.json")
    for ciphertext in (b"", b"\x02" + bytes(40), b"\x01" + bytes(5)):
        with pytest.raises(KeyUnavailable):
            keys.decrypt_data_key(ciphertext, CONTEXT)


# --- KMS -------------------------------------------------------------------------------------------


def test_kms_kids_are_the_configured_key_ids_current_first(kms_keys: KmsKeys) -> None:
    provider = kms_keys.provider()
    assert provider.jwt_signing_kid() == kms_keys.jwt_current
    assert [k.kid for k in provider.jwt_public_keys()] == [kms_keys.jwt_current, kms_keys.jwt_previous]
    assert provider.checkpoint_key_id() == kms_keys.checkpoint


def test_a_token_signed_with_the_previous_kms_key_still_verifies(kms_keys: KmsKeys) -> None:
    old = KmsKeyProvider(kms_keys.client, jwt_key_ids=[kms_keys.jwt_previous], checkpoint_key_id=kms_keys.checkpoint,
                         data_key_id=kms_keys.data)
    token = _compact_jws(old, _claims())
    current = kms_keys.provider()
    previous_pem = {k.kid: k.public_pem for k in current.jwt_public_keys()}[jwt.get_unverified_header(token)["kid"]]
    assert jwt.decode(token, key=previous_pem, algorithms=["RS256"], audience="hd-api")["sub"] == "usr_1"


def test_kms_public_keys_are_fetched_once_and_checkpoints_verify_locally(kms_keys: KmsKeys) -> None:
    calls: list[str] = []
    kms_keys.client.meta.events.register("before-call.kms", lambda model, **_: calls.append(model.name))
    provider = kms_keys.provider()
    signature = provider.sign_checkpoint(b"m")
    for _ in range(3):
        provider.jwt_public_keys()
        assert provider.verify_checkpoint(kms_keys.checkpoint, b"m", signature)
    assert calls.count("GetPublicKey") == 3  # two JWT keys and the checkpoint key, once each
    assert "Verify" not in calls


def test_a_missing_kms_key_says_to_check_the_key_id_and_region(kms_keys: KmsKeys) -> None:
    provider = KmsKeyProvider(kms_keys.client, jwt_key_ids=["11111111-2222-3333-4444-555555555555"],
                              checkpoint_key_id=kms_keys.checkpoint, data_key_id=kms_keys.data)
    with pytest.raises(KeyUnavailable, match=r"NotFoundException.*key id or ARN and the region"):
        provider.sign_jwt(b"header.claims")


def test_a_disabled_kms_key_says_it_is_disabled(kms_keys: KmsKeys) -> None:
    provider = kms_keys.provider()
    kms_keys.client.disable_key(KeyId=kms_keys.jwt_current)
    with pytest.raises(KeyUnavailable, match=r"DisabledException.*enable it"):
        provider.sign_jwt(b"header.claims")


def test_kms_verification_fails_closed_when_the_public_key_cannot_be_fetched(kms_keys: KmsKeys) -> None:
    provider = kms_keys.provider()
    signature = provider.sign_checkpoint(b"m")
    kms_keys.client.disable_key(KeyId=kms_keys.checkpoint)
    assert not provider.verify_checkpoint(kms_keys.checkpoint, b"m", signature)


def test_a_message_too_long_for_kms_is_refused_before_calling_it(kms_keys: KmsKeys) -> None:
    with pytest.raises(InvalidRequest, match="4096"):
        kms_keys.provider().sign_jwt(b"x" * 4097)


def test_kms_provider_needs_a_jwt_key(kms_keys: KmsKeys) -> None:
    with pytest.raises(ValueError):
        KmsKeyProvider(kms_keys.client, jwt_key_ids=[], checkpoint_key_id=kms_keys.checkpoint,
                       data_key_id=kms_keys.data)


def test_kms_jwt_keys_are_made_tagged_used_by_kid_disabled_and_scheduled_for_deletion(kms_keys: KmsKeys) -> None:
    provider = KmsKeyProvider(
        kms_keys.client, jwt_key_ids=[kms_keys.jwt_current], checkpoint_key_id=kms_keys.checkpoint,
        data_key_id=kms_keys.data, new_key_tags={"hd:purpose": "jwt-signing", "hd:deployment": "hd-test"},
    )
    kid = provider.create_jwt_key()
    metadata = kms_keys.client.describe_key(KeyId=kid)["KeyMetadata"]
    assert (metadata["KeySpec"], metadata["KeyUsage"]) == ("RSA_2048", "SIGN_VERIFY")
    tags = {t["TagKey"]: t["TagValue"] for t in kms_keys.client.list_resource_tags(KeyId=kid)["Tags"]}
    assert tags == {"hd:purpose": "jwt-signing", "hd:deployment": "hd-test"}
    token = _compact_jws_with(provider, kid, _claims())
    assert jwt.decode(token, key=provider.jwt_public_pem(kid), algorithms=["RS256"], audience="hd-api")
    provider.disable_jwt_key(kid)
    with pytest.raises(KeyUnavailable, match="DisabledException"):
        provider.sign_jwt_with(kid, b"h.c")
    with pytest.raises(KeyUnavailable, match="should be deleted by now but is Disabled"):
        provider.purge_jwt_key(kid)  # not scheduled: a purge must not pretend it is gone
    deletion = provider.schedule_jwt_key_deletion(kid, 30)
    assert kms_keys.client.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert timedelta(days=29) < deletion - datetime.now(UTC) <= timedelta(days=30, minutes=1)
    again = provider.schedule_jwt_key_deletion(kid, 30)  # asked again: the key's own date, no error
    assert abs(again - deletion) < timedelta(seconds=1)
    provider.purge_jwt_key(kid)  # pending deletion: KMS deletes it at its date
    kms_keys.client.cancel_key_deletion(KeyId=kid)
    with pytest.raises(KeyUnavailable, match="deletion was cancelled"):
        provider.purge_jwt_key(kid)
