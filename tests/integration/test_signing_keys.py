"""JWT signing-key rotation (issue 19): a whole year of the deployment's JWT keys, locally and on KMS (moto).

The lifecycle job runs daily on a hand-wound clock; tokens are issued and verified on the same clock
through the services' signing-key ring, as the API and the engine hosts use it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from moto import mock_aws

from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.control_settings import ControlApiSettings
from hd_core.errors import AuthenticationFailed
from hd_core.iam_audit import GENESIS_HASH, IamAuditTrail, checkpoint_message, event_hash
from hd_core.iam_events import IamEventType
from hd_core.key_lifecycle import run_key_lifecycle
from hd_core.models import ChainCheckpoint, IamEvent, Role, User, UserStatus, new_id
from hd_core.ports import KeyProvider
from hd_core.services import ControlServices, assemble_services
from hd_core.signing_keys import JWT_RING_SETTING, CheckpointKeyRing, JwtKeyRing, SigningKeyRing
from hd_core.tokens import JwtIssuer, JwtVerifier, jwks_document
from hd_core.wipe import DEPLOYMENT_CHAIN_ID
from tests.clocks import HandWoundClock

T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
ISSUER, AUDIENCE = "https://hd.test", "hardened-duck"


@dataclass
class Deployment:
    services: ControlServices
    keys: KeyProvider
    clock: HandWoundClock
    issuer: JwtIssuer
    long_issuer: JwtIssuer  # tokens that outlive their key's retirement: only the ring can refuse them
    verifier: JwtVerifier

    def run(self) -> dict[str, list[str]]:
        report = run_key_lifecycle(self.services, self.clock())
        assert report.signing_keys is not None
        return report.signing_keys.as_dict()

    def ring(self) -> SigningKeyRing:
        stored = self.services.store.get_setting(JWT_RING_SETTING)
        assert stored is not None
        return SigningKeyRing.from_json(stored)

    def jwks_kids(self) -> list[str]:
        return [entry["kid"] for entry in jwks_document(self.services.jwt_keys)["keys"]]

    def events(self) -> list[tuple[str, str]]:
        return [(e.event_type, e.target) for e in self.services.store.list_iam_events(DEPLOYMENT_CHAIN_ID)]


def _user() -> User:
    return User(new_id("usr"), new_id("org"), "ana@acme.test", Role.ANALYST, UserStatus.ACTIVE, None, None, T0)


def _deployment(tmp_path: Path, keys: KeyProvider, clock: HandWoundClock) -> Deployment:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    services = assemble_services(
        ControlApiSettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_key_ring_refresh_seconds=0),
        store=store, keys=keys, checkpoints=LocalFolderCheckpointStore(tmp_path),
        query_audit=LocalFolderAuditArchive(tmp_path), now=clock,
    )
    ring = services.jwt_keys
    ring.ring()  # the first use seeds the ring with the provider's key, created now
    return Deployment(
        services=services, keys=keys, clock=clock,
        issuer=JwtIssuer(ring, issuer=ISSUER, audience=AUDIENCE, now=clock),
        long_issuer=JwtIssuer(ring, issuer=ISSUER, audience=AUDIENCE, ttl=timedelta(days=3), now=clock),
        verifier=JwtVerifier(ring, issuer=ISSUER, audience=AUDIENCE, now=clock),
    )


@pytest.fixture
def local(tmp_path: Path) -> Deployment:
    clock = HandWoundClock(T0)
    return _deployment(tmp_path, LocalKeyFile(tmp_path / "keys" / "local-keys.json", now=clock), clock)


@pytest.fixture
def on_kms(tmp_path: Path, aws_credentials: None) -> Iterator[Deployment]:
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        jwt_key = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        checkpoint_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        keys = KmsKeyProvider(kms, jwt_key_ids=[jwt_key], checkpoint_key_id=checkpoint_key,
                              data_key_id=kms.create_key()["KeyMetadata"]["KeyId"],
                              new_key_tags={"hd:purpose": "jwt-signing", "hd:deployment": "hd-test"})
        yield _deployment(tmp_path, keys, HandWoundClock(datetime.now(UTC)))


def _refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as refused:
        verifier.verify(token)
    return str(refused.value.reason)


def _a_year(d: Deployment) -> dict[str, object]:
    """Run the job daily for a year; returns what was seen on the way (kids by day, tokens and their fates)."""
    start = d.clock()
    first = d.issuer.issue(_user(), "live")
    first_kid = jwt.get_unverified_header(first)["kid"]
    assert d.ring().current.kid == first_kid and d.jwks_kids() == [first_kid]
    created: dict[int, list[str]] = {}
    disabled: dict[int, list[str]] = {}
    deleted: dict[int, list[str]] = {}
    seen: dict[str, object] = {"first_kid": first_kid}
    for day in range(366):
        d.clock.at = start + timedelta(days=day)
        if day == 90:
            # Minutes before the rotation: an ordinary token, and one that outlives its key's retirement.
            d.clock.advance(minutes=-10)
            seen["before"] = d.issuer.issue(_user(), "live")
            seen["outliving"] = d.long_issuer.issue(_user(), "live")
            d.clock.advance(minutes=10)
        outcome = d.run()
        assert outcome["failed"] == []
        for name, log in (("created", created), ("disabled", disabled), ("deleted", deleted)):
            if outcome[name]:
                log[day] = outcome[name]
        if day == 90:
            new_kid = created[90][0]
            # Right after the rotation: the JWKS serves the new and the previous key; old tokens still verify.
            assert d.jwks_kids() == [new_kid, first_kid]
            assert d.verifier.verify(str(seen["before"]))["sub"]
            assert jwt.get_unverified_header(d.issuer.issue(_user(), "live"))["kid"] == new_kid
            d.clock.advance(minutes=49)
            assert d.verifier.verify(str(seen["before"]))["sub"]  # 59 minutes old: still valid
            assert d.run()["disabled"] == []  # its tokens may still be in use: the old key stays
            d.clock.advance(minutes=2)
            assert "expired" in _refused(d.verifier, str(seen["before"]))
            assert d.verifier.verify(str(seen["outliving"]))["sub"]  # its key is retired, not yet disabled
        if day == 91:
            seen["outliving_refusal"] = _refused(d.verifier, str(seen["outliving"]))
            seen["jwks_91"] = d.jwks_kids()
    seen.update(created=created, disabled=disabled, deleted=deleted)
    return seen


def _check_the_year(d: Deployment, seen: dict[str, object], deletion_days: tuple[int, ...]) -> None:
    created, disabled, deleted = seen["created"], seen["disabled"], seen["deleted"]
    assert isinstance(created, dict) and isinstance(disabled, dict) and isinstance(deleted, dict)
    # A new key every 90 days; each predecessor disabled on the first run after its tokens expired (the next
    # day), and deleted on the first run after its deletion date (the provider's: 30 days after it was asked).
    assert sorted(created) == [90, 180, 270, 360]
    kids = [seen["first_kid"], *(created[day][0] for day in sorted(created))]
    assert disabled == {91: [kids[0]], 181: [kids[1]], 271: [kids[2]], 361: [kids[3]]}
    assert deleted == {day: [kids[index]] for index, day in enumerate(deletion_days)}
    assert seen["outliving_refusal"] == "jwt kid is not one of our signing keys"
    assert seen["jwks_91"] == [kids[1]]
    assert d.jwks_kids() == [kids[4]]
    ring = d.ring()
    assert [key.kid for key in ring.keys] == list(reversed(kids))
    assert [key.kid for key in ring.verifying] == [kids[4]]
    events = d.events()
    for kid in kids[1:]:
        assert ("signing_key.rotated", kid) in events
    for kid in kids[:4]:
        assert ("signing_key.disabled", kid) in events
    for kid in kids[:len(deletion_days)]:
        assert ("signing_key.deleted", kid) in events
    assert d.services.trail.verify_chain(DEPLOYMENT_CHAIN_ID).chain_valid


def test_a_year_of_local_jwt_keys(local: Deployment, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "local-keys.json"
    original = key_file.read_bytes() if key_file.exists() else None
    seen = _a_year(local)
    _check_the_year(local, seen, (121, 211, 301))
    created = seen["created"]
    assert isinstance(created, dict)
    folder = tmp_path / "keys" / "jwt"
    # Keys made by the rotation have files of their own; the deleted ones are gone, the key file never changed.
    assert not (folder / f"{created[90][0]}.json").exists() and not (folder / f"{created[180][0]}.json").exists()
    assert (folder / f"{created[270][0]}.json").exists() and (folder / f"{created[360][0]}.json").exists()
    assert original is None or key_file.read_bytes() == original
    assert (folder / f"{seen['first_kid']}.disabled").exists()


def test_a_year_of_kms_jwt_keys(on_kms: Deployment) -> None:
    seen = _a_year(on_kms)
    # KMS dates a deletion on its own clock (the wall clock, which this year starts on): 30 days after the
    # request is before the next day's run on the test's clock, so each key is confirmed gone the day after.
    _check_the_year(on_kms, seen, (92, 182, 272, 362))
    kms = on_kms.keys._kms  # type: ignore[attr-defined]
    created = seen["created"]
    assert isinstance(created, dict)
    for day in (90, 180, 270):  # KMS deletes them at their date; moto keeps them pending
        assert kms.describe_key(KeyId=created[day][0])["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert kms.describe_key(KeyId=seen["first_kid"])["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert kms.describe_key(KeyId=created[360][0])["KeyMetadata"]["KeyState"] == "Enabled"
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=created[360][0])["Tags"]}
    assert tags == {"hd:purpose": "jwt-signing", "hd:deployment": "hd-test"}


def test_a_second_run_the_same_day_changes_nothing(local: Deployment) -> None:
    local.clock.at = T0 + timedelta(days=90)
    assert len(local.run()["created"]) == 1
    ring = local.ring()
    assert local.run() == {"created": [], "disabled": [], "deleted": [], "failed": [], "checkpoint_created": []}
    assert local.ring() == ring


def test_a_failed_key_creation_leaves_the_ring_as_it_was_and_the_next_run_rotates(
    local: Deployment, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hd_core.errors import KeyUnavailable

    def refuse() -> str:
        raise KeyUnavailable("KMS CreateKey failed (AccessDeniedException)")

    local.clock.at = T0 + timedelta(days=90)
    before = local.ring()
    monkeypatch.setattr(local.keys, "create_jwt_key", refuse)
    assert local.run()["failed"] == [before.current.kid]
    assert local.ring() == before
    monkeypatch.undo()
    local.clock.advance(days=1)
    assert len(local.run()["created"]) == 1


def test_an_on_demand_run_for_one_organisation_leaves_the_signing_keys_alone(local: Deployment) -> None:
    local.clock.at = T0 + timedelta(days=200)
    report = run_key_lifecycle(local.services, local.clock(), org_ids=[])
    assert report.signing_keys is None and len(local.ring().keys) == 1


# --- IAM checkpoint keys ----------------------------------------------------------------------------------


def _record(d: Deployment, chain: str, n: int) -> None:
    for index in range(n):
        d.services.trail.record(chain, IamEventType.QUOTA_CHANGED, actor="usr_admin", target=f"quota_{index}",
                                before=None, after={"limit": index}, request_id=f"req_{index}")


def _signers(d: Deployment, chain: str) -> set[str]:
    return {checkpoint.key_id for checkpoint in d.services.checkpoints.list_checkpoints(chain)}


def _fresh_trail(d: Deployment) -> IamAuditTrail:
    """What another process (verify-chain in a new Lambda container) builds: nothing learnt in memory."""
    ring = CheckpointKeyRing(d.services.store, d.services.checkpoints, d.keys)
    return IamAuditTrail(d.services.store, d.services.checkpoints, ring)


@pytest.mark.parametrize("where", ["local", "on_kms"])
def test_a_new_checkpoint_key_signs_after_rotation_and_old_checkpoints_stay_verifiable(
    where: str, request: pytest.FixtureRequest,
) -> None:
    d: Deployment = request.getfixturevalue(where)
    anchor = d.keys.checkpoint_key_id()
    _record(d, "org_acme", 3)
    assert _signers(d, "org_acme") == {anchor}
    d.clock.advance(days=89)
    assert d.run()["checkpoint_created"] == []
    d.clock.advance(days=1)
    [new_kid] = d.run()["checkpoint_created"]
    assert new_kid != anchor
    _record(d, "org_acme", 2)
    assert _signers(d, "org_acme") == {anchor, new_kid}
    # The introduction is in the deployment chain, with the new public key, signed by the key in force.
    [added] = [e for e in d.services.store.list_iam_events(DEPLOYMENT_CHAIN_ID)
               if e.event_type == "signing_key.checkpoint_key_added"]
    assert added.after is not None and added.after["kid"] == new_kid and added.after["signed_by"] == anchor
    assert base64.b64decode(str(added.after["public_key"])) == d.keys.checkpoint_public_key(new_kid)
    for trail in (d.services.trail, _fresh_trail(d)):
        for chain in ("org_acme", DEPLOYMENT_CHAIN_ID):
            verdict = trail.verify_chain(chain)
            assert verdict.chain_valid, (chain, verdict.first_break)
            assert verdict.checkpoint_size == verdict.entry_count


def test_a_key_introduced_without_a_trusted_signature_vouches_for_nothing(local: Deployment) -> None:
    """An attacker who can write to the store and the checkpoint folder, but not sign with a trusted key."""
    _record(local, "org_acme", 2)
    attacker = ec.generate_private_key(ec.SECP256R1())
    public = attacker.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = "local-checkpoint-" + "a" * 24
    store, checkpoints = local.services.store, local.services.checkpoints
    head = store.iam_chain_head(DEPLOYMENT_CHAIN_ID)
    prev_hash, seq = (GENESIS_HASH, 1) if head is None else (head.hash, head.seq + 1)
    at = datetime.now(UTC)
    after = {"kid": kid, "public_key": base64.b64encode(public).decode(), "algorithm": "ECDSA_SHA_256",
             "signed_by": kid}
    digest = event_hash(prev_hash, "iamevt_forged", DEPLOYMENT_CHAIN_ID, "signing_key.checkpoint_key_added",
                        "system", kid, None, after, at, "req_forged")
    store.append_iam_event(IamEvent(DEPLOYMENT_CHAIN_ID, seq, "iamevt_forged", "signing_key.checkpoint_key_added",
                                    "system", kid, None, after, at, "req_forged", prev_hash, digest))

    def forge(chain: str, size: int, head_hash: str) -> None:
        signature = attacker.sign(checkpoint_message(chain, size, head_hash, at), ec.ECDSA(hashes.SHA256()))
        encoded = base64.b64encode(signature).decode()
        checkpoints.put_checkpoint(ChainCheckpoint(chain, size, head_hash, at, kid, encoded))

    forge(DEPLOYMENT_CHAIN_ID, seq, digest)  # the introduction "signed" by the key it introduces
    org_head = store.iam_chain_head("org_acme")
    assert org_head is not None
    forge("org_acme", org_head.seq, org_head.hash)
    for trail in (local.services.trail, _fresh_trail(local)):
        verdict = trail.verify_chain("org_acme")
        assert not verdict.chain_valid
        assert verdict.first_break is not None and verdict.first_break.kind == "checkpoint_signature_invalid"
    assert kid not in _fresh_trail(local)._keys.trusted_keys()  # type: ignore[attr-defined]


def test_a_process_that_cannot_write_the_store_uses_the_configured_keys_until_a_writer_stores_the_ring(
    local: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh = SqliteControlStore(tmp_path / "read-only.sqlite3")

    def refuse(name: str, value: str) -> str:
        raise PermissionError("AccessDeniedException: dynamodb:PutItem")

    monkeypatch.setattr(fresh, "put_setting_if_absent", refuse)
    ring = JwtKeyRing(fresh, local.keys, now=local.clock, refresh=timedelta(0))
    issuer = JwtIssuer(ring, issuer=ISSUER, audience=AUDIENCE, now=local.clock)
    verifier = JwtVerifier(ring, issuer=ISSUER, audience=AUDIENCE, now=local.clock)
    token = issuer.issue(_user(), "live")
    assert jwt.get_unverified_header(token)["kid"] == local.keys.configured_jwt_kids()[0]
    assert verifier.verify(token)["sub"]
    assert fresh.get_setting(JWT_RING_SETTING) is None
