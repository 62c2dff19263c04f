"""README's webhook verification snippet accepts what the delivery signs and refuses what it must refuse."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from hd_core.webhooks import signed_headers

README = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")


def readme_verify() -> Callable[..., bool]:
    match = re.search(r"### Webhooks.*?```python\n(.*?)```", README, re.S)
    assert match is not None, "README's Webhooks section has no python snippet"
    namespace: dict[str, object] = {}
    exec(match.group(1), namespace)  # README's own example, run as a reader would
    verify = namespace["verify"]
    assert callable(verify)
    return verify


def test_the_snippet_verifies_a_delivery_as_the_engine_signs_it() -> None:
    verify = readme_verify()
    body = '{"id": "evt_1", "type": "key.expiring", "data": {}}'
    headers = signed_headers("whsec_test", "evt_1", int(time.time()), body)
    assert verify("whsec_test", headers, body.encode())
    assert not verify("whsec_other", headers, body.encode())
    assert not verify("whsec_test", headers, body.replace("expiring", "revoked").encode())
    stale = signed_headers("whsec_test", "evt_1", int(time.time()) - 3600, body)
    assert not verify("whsec_test", stale, body.encode())
