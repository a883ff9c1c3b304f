import os

from podplumb.inspect import print_leases


def test_leases_listed_from_the_reference_format(tmp_path):
    net = tmp_path / "mynet"
    net.mkdir()
    (net / "10.1.0.2").write_bytes(b"abc123\r\neth0")
    (net / "fd01::2").write_bytes(b"abc123\r\neth0")
    (net / "10.1.0.3").write_bytes(b"oldstyle")
    (net / "last_reserved_ip.0").write_text("10.1.0.3")
    (net / "lock").write_text("")
    lines = []
    assert print_leases(str(tmp_path), out=lines.append) == 0
    rows = [line.split() for line in lines[1:]]
    assert rows == [["mynet", "10.1.0.2", "abc123", "eth0"], ["mynet", "10.1.0.3", "oldstyle", "-"],
                    ["mynet", "fd01::2", "abc123", "eth0"]]
    assert os.listdir(net)   # read-only: nothing removed


def test_missing_data_dir(tmp_path):
    lines = []
    assert print_leases(str(tmp_path / "nope"), out=lines.append) == 0
    assert "does not exist" in lines[0]


def test_a_named_network_without_leases_is_an_error(tmp_path):
    lines, errors = [], []
    assert print_leases(str(tmp_path), "NOSUCHNET", out=lines.append, err=errors.append) == 1
    assert lines == [] and "NOSUCHNET" in errors[0]
