"""host-local's lease index (`podplumb-leases`): used while it is current, so an operation reads one
file instead of every lease; read around (and written again) when it is missing, torn, corrupt, or
written for another state of the directory; and never trusted blindly where it could be wrong
without the directory showing it."""

import os

import pytest

from plugins.host_local import lease_index
from tests.unit.test_host_local import (add, addresses, call, current_index, delete, leases, network,
                                        scans)


def index_path(data_dir):
    return os.path.join(data_dir, "testnet", lease_index.NAME)


def read_index(data_dir) -> bytes:
    with open(index_path(data_dir), "rb") as f:
        return f.read()


def write_in_place(path, data: bytes):
    """Rewrite an existing file without changing its directory (as the index and the reference's
    last_reserved_ip.N are written)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def forge_index(data_dir, table):
    """An index that claims to be current but says `table`: what a filesystem with coarse timestamps
    could leave after the reference plugin changed the directory within our last change's tick."""
    directory = os.path.join(data_dir, "testnet")
    write_in_place(index_path(data_dir), lease_index.render(table, lease_index.state(directory)))
    assert current_index(data_dir) == table


# ---- the file ----

STATE = (1234, 1795962362279151016)
TABLE = {"10.1.0.2": "c1 eth0", "fd00::2": "c1 eth0", "10.1.0.3": "c2"}


def test_index_round_trip_and_what_it_refuses():
    data = lease_index.render(TABLE, STATE)
    assert lease_index.parse(data, STATE) == TABLE
    assert lease_index.parse(data, (STATE[0], STATE[1] + 1)) is None            # directory changed since
    assert lease_index.parse(data, (STATE[0] + 1, STATE[1])) is None            # another directory
    assert all(lease_index.parse(data[:n], STATE) is None for n in range(len(data)))   # cut anywhere
    assert lease_index.parse(data + data[-8:], STATE) is None
    assert lease_index.parse(data.replace(b"\nc2\n", b"\n"), STATE) is None
    assert lease_index.parse(b"\xff" + data, STATE) is None
    assert lease_index.parse(lease_index.render({}, STATE), STATE) == {}


@pytest.mark.parametrize("failing", ["the rest", "the first byte", "the rest, disk full"])
def test_a_writer_stopped_part_way_leaves_no_index(failing, tmp_path, monkeypatch):
    path = tmp_path / lease_index.NAME
    path.write_bytes(lease_index.render(TABLE, STATE))
    new = lease_index.render({"10.1.0.9": "c9 eth0"}, STATE)
    real = os.pwrite

    def pwrite(fd, data, offset):
        if failing == "the rest, disk full" and offset == 1:
            return real(fd, data[:len(data) // 2], offset)
        if (failing, offset) in (("the rest", 1), ("the first byte", 0)) and data != b"#":
            raise KeyboardInterrupt   # as a SIGKILL would stop it
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            lease_index.write(fd, new)
        except KeyboardInterrupt:
            pass
    finally:
        os.close(fd)
    assert lease_index.parse(path.read_bytes(), STATE) is None
    monkeypatch.setattr(os, "pwrite", real)
    fd = os.open(path, os.O_RDWR)
    lease_index.write(fd, new)
    os.close(fd)
    assert lease_index.parse(path.read_bytes(), STATE) == {"10.1.0.9": "c9 eth0"}


@pytest.mark.parametrize("holder", [("c1", "eth0"), ("c1", None), ("hand made", "eth0"), ("a\\s b", "x y\n"),
                                    ("\\", "\\\\s"), ("", "eth0"), ("", None), ("c1\r", "eth0")])
def test_every_holder_reads_back_as_it_was(holder):
    words = lease_index.holder_words(*holder)
    assert "\n" not in words and words.count(" ") == (holder[1] is not None)
    assert lease_index.holder(words) == holder


def test_index_is_never_a_lease_to_the_reference():
    """The reference takes any file whose trimmed content is "containerID\\r\\nifname" (or the ID
    alone) as a lease: the first line up to a carriage return would be a container ID, which has no
    space."""
    data = lease_index.render({**TABLE, "10.1.0.9": lease_index.holder_words("c\r", "eth0")}, STATE)
    assert b" " in data.split(b"\n")[0]


# ---- operations use it while it is current ----

def test_add_del_check_read_the_index_not_the_leases(data_dir, netns_path, monkeypatch):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    for i in range(20):
        add(conf, netns_path, f"other{i}")
    scanned = scans(monkeypatch)
    first = add(conf, netns_path, "c1")
    before = read_index(data_dir)
    assert add(conf, netns_path, "c1") == first                        # repeated ADD: the same addresses
    assert read_index(data_dir) == before                              # and nothing to write
    assert call("CHECK", dict(conf, prevResult=first), netns_path, "c1") == (None, 0)
    delete(conf, "c1")
    add(conf, netns_path, "c2")
    delete(conf, "c2")
    assert scanned == []
    assert len(current_index(data_dir)) == 40 == len(leases(data_dir))


def _spoil(data_dir, how, older: bytes):
    """Make the current index of a directory holding c1 and c2 no longer current, one way."""
    path = index_path(data_dir)
    data = read_index(data_dir)
    if how == "missing":
        os.unlink(path)
    elif how == "empty":
        write_in_place(path, b"")
    elif how == "torn":
        write_in_place(path, data[:len(data) // 2])
    elif how == "no end line":
        write_in_place(path, data[:-len(b"end\n")])
    elif how == "garbage":
        write_in_place(path, b"\x00\x01garbage\n" * 20)
    elif how == "older":               # an index of an earlier state, put back without touching the directory
        write_in_place(path, older)
    elif how == "changed behind it":   # a lease made as the reference makes it
        with open(os.path.join(data_dir, "testnet", "10.1.0.9"), "wb") as f:
            f.write(b"c3\r\neth0")


@pytest.mark.parametrize("how", ["missing", "empty", "torn", "no end line", "garbage", "older", "changed behind it"])
def test_an_index_not_current_is_read_around_and_written_again(how, data_dir, netns_path, monkeypatch):
    conf = network(data_dir)
    add(conf, netns_path, "c1")
    older = read_index(data_dir)                     # says c1 only
    add(conf, netns_path, "c2")
    _spoil(data_dir, how, older)
    assert current_index(data_dir) is None
    scanned = scans(monkeypatch)
    assert addresses(add(conf, netns_path, "c2")) == ["10.1.0.3/24"]      # c2's lease found again
    assert scanned == [os.path.join(data_dir, "testnet")]
    held = {"10.1.0.2": "c1 eth0", "10.1.0.3": "c2 eth0"}
    if how == "changed behind it":
        held["10.1.0.9"] = "c3 eth0"
        assert addresses(add(conf, netns_path, "c3")) == ["10.1.0.9/24"]
    assert current_index(data_dir) == held
    assert addresses(add(conf, netns_path, "c4")) == ["10.1.0.4/24"]
    assert len(scanned) == 1


# ---- where it could be wrong without the directory showing it ----

def test_an_address_the_index_missed_is_skipped_and_learned(data_dir, netns_path):
    conf = network(data_dir)
    add(conf, netns_path, "c1")
    add(conf, netns_path, "c2")                               # 10.1.0.3
    forge_index(data_dir, {"10.1.0.2": "c1 eth0"})
    write_in_place(os.path.join(data_dir, "testnet", "last_reserved_ip.0"), b"10.1.0.2")
    assert addresses(add(conf, netns_path, "c3")) == ["10.1.0.4/24"]   # 10.1.0.3's link failed
    assert current_index(data_dir) == {"10.1.0.2": "c1 eth0", "10.1.0.3": "c2 eth0",
                                       "10.1.0.4": "c3 eth0"}


def test_what_the_index_says_a_container_holds_is_confirmed_from_its_files(data_dir, netns_path):
    conf = network(data_dir)
    add(conf, netns_path, "c1")                               # 10.1.0.2
    add(conf, netns_path, "c2")                               # 10.1.0.3
    os.unlink(os.path.join(data_dir, "testnet", "10.1.0.2"))
    write_in_place(os.path.join(data_dir, "testnet", "10.1.0.3"), b"c9\r\neth0")
    forge_index(data_dir, {"10.1.0.2": "c1 eth0", "10.1.0.3": "c2 eth0"})
    assert addresses(add(conf, netns_path, "c1")) == ["10.1.0.4/24"]   # not the 10.1.0.2 it no longer holds
    forge_index(data_dir, {"10.1.0.3": "c2 eth0", "10.1.0.4": "c1 eth0"})
    delete(conf, "c2")                                                 # c9's lease stays
    assert leases(data_dir) == {"10.1.0.3": b"c9\r\neth0", "10.1.0.4": b"c1\r\neth0"}
    assert current_index(data_dir) == {"10.1.0.3": "c9 eth0", "10.1.0.4": "c1 eth0"}


def test_gc_reads_the_lease_files_and_repairs_the_index(data_dir, netns_path):
    conf = network(data_dir)
    add(conf, netns_path, "c1")
    add(conf, netns_path, "c2")
    forge_index(data_dir, {"10.1.0.2": "c1 eth0", "10.1.0.7": "c7 eth0"})
    assert call("GC", dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})) \
        == (None, 0)
    assert leases(data_dir) == {"10.1.0.2": b"c1\r\neth0"}
    assert current_index(data_dir) == {"10.1.0.2": "c1 eth0"}


def test_a_lease_file_made_by_hand_is_indexed_as_it_is(data_dir, netns_path):
    conf = network(data_dir)
    add(conf, netns_path, "c1")
    with open(os.path.join(data_dir, "testnet", "10.1.0.9"), "wb") as f:
        f.write(b"hand made\r\neth0")
    assert addresses(add(conf, netns_path, "c1")) == ["10.1.0.2/24"]
    assert current_index(data_dir) == {"10.1.0.2": "c1 eth0", "10.1.0.9": "hand\\smade eth0"}
    out, code = call("ADD", conf, netns_path, "c3", cni_args="IP=10.1.0.9")
    assert code == 102 and "held by container hand made (ifname eth0)" in out["msg"]
    delete(conf, "hand")                                        # no such attachment
    assert "10.1.0.9" in leases(data_dir)
    assert call("GC", dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})) \
        == (None, 0)
    assert leases(data_dir) == {"10.1.0.2": b"c1\r\neth0"}
