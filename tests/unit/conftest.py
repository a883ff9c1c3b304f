"""Fixtures of the unit tests."""

import pytest

from tests import kernel


@pytest.fixture(scope="module")
def netns_path():
    """One throwaway namespace: the dispatcher wants CNI_NETNS to exist for ADD and CHECK."""
    name = kernel.unique("pphl-", 15)
    kernel.add_netns(name)
    try:
        yield kernel.netns_path(name)
    finally:
        kernel.del_netns(name)
