"""Many host-local processes at once on one lease directory: the lock and O_EXCL-like reservations
keep every address unique, and the lease index stays the leases' own."""

import json
import os
import subprocess

from tests.unit.test_host_local import current_index, files, leases, network

PROCESSES = 32


def start(cni_bin, command, conf, container_id, netns=""):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0", "CNI_PATH": cni_bin}
    if netns:
        env["CNI_NETNS"] = netns
    proc = subprocess.Popen([os.path.join(cni_bin, "host-local")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return proc


def finish(proc) -> bytes:
    out = proc.stdout.read()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, (out, err)
    proc.stdout.close()
    proc.stderr.close()
    return out


def test_concurrent_adds_get_distinct_addresses(cni_bin, data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    procs = [start(cni_bin, "ADD", conf, f"ctr{i}", netns_path) for i in range(PROCESSES)]
    results = {f"ctr{i}": json.loads(finish(p)) for i, p in enumerate(procs)}
    for family in (0, 1):
        got = {r["ips"][family]["address"] for r in results.values()}
        assert len(got) == PROCESSES
    held = leases(data_dir)
    assert len(held) == 2 * PROCESSES
    for container_id, result in results.items():
        for ip in result["ips"]:
            assert held[ip["address"].split("/")[0]] == f"{container_id}\r\neth0".encode()
    assert not [name for name in files(data_dir) if name.endswith(".podplumb-tmp")]
    assert current_index(data_dir) == {address: holder.decode().replace("\r\n", " ")
                                       for address, holder in held.items()}

    procs = [start(cni_bin, "DEL", conf, f"ctr{i}") for i in range(PROCESSES)]
    assert all(finish(p) == b"" for p in procs)
    assert leases(data_dir) == {}
    assert current_index(data_dir) == {}


def test_concurrent_adds_on_a_small_pool_never_oversubscribe(cni_bin, data_dir, netns_path):
    conf = network(data_dir, {"subnet": "10.1.0.0/28"})   # 13 addresses: .2-.14 (.1 is the gateway)
    procs = [start(cni_bin, "ADD", conf, f"ctr{i}", netns_path) for i in range(PROCESSES)]
    ok, exhausted = 0, 0
    for p in procs:
        out = json.loads(p.stdout.read())
        p.stdout.close()
        p.stderr.close()
        if p.wait(timeout=60) == 0:
            ok += 1
        else:
            assert out["code"] == 101, out
            exhausted += 1
    assert (ok, exhausted) == (13, PROCESSES - 13)
    assert len(leases(data_dir)) == 13 == len(current_index(data_dir))
