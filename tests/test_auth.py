"""The one namespace policy (``kvstore.auth.Policy``), table-driven; the same answers through
every front end are checked by ``tests/test_auth_matrix.py``."""

from __future__ import annotations

import pytest

from kvstore.auth import NO_OWNER, NamespaceTaken, Op, Policy, Tenants
from kvstore.errors import AccessDenied, NamespaceNotFound

TENANTS = Tenants.from_dict({"tenants": [
    {"name": "acme", "access_key": "A", "secret_key": "a", "namespaces": ["acme-*", "shared-*"]},
    {"name": "globex", "access_key": "G", "secret_key": "g", "namespaces": ["shared-*"]},
]})
ACME = TENANTS.by_access_key("A")
USE = (Op.READ, Op.WRITE, Op.LIST, Op.DELETE)


@pytest.mark.parametrize("op", USE)
@pytest.mark.parametrize(("ns", "owner", "outcome"), [
    ("acme-a", "acme", None),                       # its own
    ("shared-a", "acme", None),
    ("shared-g", "globex", AccessDenied),           # someone else's
    ("globex-x", "globex", AccessDenied),           # not its name at all
    ("shared-o", NO_OWNER, AccessDenied),           # ownerless: refused by default
    ("acme-none", None, NamespaceNotFound),         # its name, absent
    ("globex-none", None, AccessDenied),            # not its name, absent: looks the same
])
def test_use(op: Op, ns: str, owner: str | None, outcome: type[Exception] | None) -> None:
    policy = Policy(TENANTS)
    if outcome is None:
        policy.check(ACME, ns, op, owner)
    else:
        with pytest.raises(outcome):
            policy.check(ACME, ns, op, owner)


def test_create() -> None:
    policy = Policy(TENANTS)
    policy.check(ACME, "acme-new", Op.CREATE, None)
    policy.check(ACME, "acme-mine", Op.CREATE, "acme")  # idempotent: the front end answers
    with pytest.raises(NamespaceTaken):
        policy.check(ACME, "shared-g", Op.CREATE, "globex")
    with pytest.raises(AccessDenied) as ownerless:
        policy.check(ACME, "shared-o", Op.CREATE, NO_OWNER)
    assert "set-owner" in str(ownerless.value)
    with pytest.raises(AccessDenied):
        policy.check(ACME, "globex-new", Op.CREATE, None)


def test_listing_shows_what_the_tenant_may_read() -> None:
    policy = Policy(TENANTS)
    assert policy.visible(ACME, "acme-a", "acme")
    assert not policy.visible(ACME, "shared-o", NO_OWNER)
    assert not policy.visible(ACME, "shared-g", "globex")


def test_development_mode_allows_everything_but_reading_what_is_absent() -> None:
    policy = Policy(Tenants.development())
    dev = Tenants.development().by_access_key("any")
    for op in USE:
        policy.check(dev, "x-ns", op, NO_OWNER)
        policy.check(dev, "x-ns", op, "someone")
    policy.check(dev, "new-ns", Op.CREATE, None)
    with pytest.raises(NamespaceNotFound):
        policy.check(dev, "new-ns", Op.READ, None)
