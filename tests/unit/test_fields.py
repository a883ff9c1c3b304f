"""Shared config field checks."""

import pytest

from cni import fields
from cni.errors import CNIError


def test_dns_object_passes_and_absent_is_none():
    dns = {"nameservers": ["10.0.0.53"], "domain": "cluster.local", "search": ["svc"], "options": ["ndots:5"]}
    assert fields.dns({"dns": dns}) == dns
    assert fields.dns({}) is None and fields.dns({"dns": None}) is None and fields.dns({"dns": {}}) is None


@pytest.mark.parametrize("value, named", [
    ("8.8.8.8", "'dns'"), (["8.8.8.8"], "'dns'"), ({"nameservers": "8.8.8.8"}, "dns.nameservers"),
    ({"nameservers": [53]}, "dns.nameservers"), ({"domain": ["a"]}, "dns.domain"), ({"search": "a"}, "dns.search"),
])
def test_dns_of_the_wrong_shape_is_refused(value, named):
    with pytest.raises(CNIError) as refused:
        fields.dns({"dns": value})
    assert refused.value.code == 7 and named in refused.value.msg
