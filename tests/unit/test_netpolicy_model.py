"""Labels, identities and selectors as Cilium defines them."""

from __future__ import annotations

import pytest

from andon.netpolicy.identity import (
    ID_HOST, ID_WORLD, LOCAL_IDENTITY_BASE, MIN_USER_IDENTITY, Endpoint, IdentityAllocator,
)  # fmt: skip
from andon.netpolicy.labels import Label, PolicyError, labels_from
from andon.netpolicy.selector import EndpointSelector

WEB = labels_from(["k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod", "container:tier=front"])


def test_label_parse_sources():
    assert Label.parse("k8s:app=web") == Label("k8s", "app", "web")
    assert Label.parse("app=web") == Label("k8s", "app", "web")  # endpoint labels default to k8s
    assert Label.parse("reserved:host") == Label("reserved", "host", "")
    # a dotted prefix is a key, not a source
    assert Label.parse("io.cilium/x=1") == Label("k8s", "io.cilium/x", "1")
    assert str(Label.parse("k8s:io.kubernetes.pod.namespace=kube-system")) == "k8s:io.kubernetes.pod.namespace=kube-system"
    with pytest.raises(PolicyError):
        Label.parse("")


@pytest.mark.parametrize(
    "match_labels, exprs, selected",
    [
        ({}, [], True),  # empty selector: all endpoints
        ({"app": "web"}, [], True),  # no source = any:
        ({"any:app": "web"}, [], True),
        ({"k8s:app": "web"}, [], True),
        ({"container:app": "web"}, [], False),  # wrong source
        ({"tier": "front"}, [], True),  # container label through any:
        ({"k8s:tier": "front"}, [], False),
        ({"app": "db"}, [], False),
        ({"app": "web", "k8s:io.kubernetes.pod.namespace": "prod"}, [], True),  # matchLabels AND
        ({"app": "web", "k8s:io.kubernetes.pod.namespace": "dev"}, [], False),
        ({}, [{"key": "app", "operator": "In", "values": ["db", "web"]}], True),
        ({}, [{"key": "app", "operator": "In", "values": ["db"]}], False),
        ({}, [{"key": "app", "operator": "NotIn", "values": ["db"]}], True),
        ({}, [{"key": "app", "operator": "NotIn", "values": ["web"]}], False),
        ({}, [{"key": "missing", "operator": "NotIn", "values": ["x"]}], True),  # absent key satisfies NotIn
        ({}, [{"key": "app", "operator": "Exists"}], True),
        ({}, [{"key": "missing", "operator": "Exists"}], False),
        ({}, [{"key": "missing", "operator": "DoesNotExist"}], True),
        ({}, [{"key": "k8s:app", "operator": "DoesNotExist"}], False),
        ({"app": "web"}, [{"key": "tier", "operator": "In", "values": ["back"]}], False),  # labels AND expressions
        ({"reserved:all": ""}, [], True),
    ],
)
def test_selector_table(match_labels, exprs, selected):
    assert EndpointSelector.build(match_labels, exprs).matches(WEB) is selected


def test_selector_reserved_label_matches_host_only():
    host = labels_from(["reserved:host"])
    sel = EndpointSelector.build({"reserved:host": ""})
    assert sel.matches(host) and not sel.matches(WEB)


def test_selector_bad_operator_and_values():
    with pytest.raises(PolicyError):
        EndpointSelector.build({}, [{"key": "a", "operator": "Contains", "values": ["x"]}])
    with pytest.raises(PolicyError):
        EndpointSelector.build({}, [{"key": "a", "operator": "In"}])
    with pytest.raises(PolicyError):
        EndpointSelector.build({}, [{"key": "a", "operator": "Exists", "values": ["x"]}])


def test_identity_same_labels_same_id_and_reserved():
    a = IdentityAllocator()
    web = a.allocate(["app=web", "env=prod"])
    assert web.id == MIN_USER_IDENTITY == 256
    assert a.allocate({"env": "prod", "app": "web"}) is web  # order and form do not matter
    assert a.allocate(["app=db"]).id == 257
    assert a.reserved_identity("host").id == ID_HOST == 1
    assert a.reserved_identity("world").id == ID_WORLD == 2
    assert [a.reserved_identity(n).id for n in ("unmanaged", "health", "init", "remote-node")] == [3, 4, 5, 6]
    assert a.allocate(["reserved:host"]).id == 1
    assert a.allocate_cidr("10.0.0.0/8").id == LOCAL_IDENTITY_BASE
    assert a.allocate_cidr("10.0.0.0/8").id == LOCAL_IDENTITY_BASE


def test_identity_persisted_and_restored():
    a = IdentityAllocator()
    a.allocate(["app=web"])
    db = a.allocate(["app=db"])
    b = IdentityAllocator.from_dict(a.to_dict())
    assert b.allocate(["app=db"]).id == db.id == 257
    assert b.allocate(["app=new"]).id == 258  # numbers in use are not handed out again
    with pytest.raises(PolicyError):
        IdentityAllocator.from_dict({"identities": {"2": ["k8s:x=y"]}})
    with pytest.raises(PolicyError):
        IdentityAllocator.from_dict({"identities": {"300": ["k8s:x=y"], "301": ["k8s:x=y"]}})


def test_endpoint_validation():
    ep = Endpoint.make("web1", "netns", {"app": "web"}, ["10.0.0.2", "fd00::2"], ifname="veth-web1")
    assert [str(a) for a in ep.addresses] == ["10.0.0.2", "fd00::2"]
    with pytest.raises(PolicyError, match="kind"):
        Endpoint.make("x", "vm")
    with pytest.raises(PolicyError, match="cgroup path"):
        Endpoint.make("x", "cgroup")
    with pytest.raises(PolicyError, match="not an IPv4"):
        Endpoint.make("x", "netns", addresses=["10.0.0.300"])
    with pytest.raises(PolicyError, match="reserved"):
        Endpoint.make("x", "netns", ["reserved:host"])
