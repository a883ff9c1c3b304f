"""cni.rtnl and cni.netlink against a real kernel: kernel-filtered dumps give what `ip` shows for one link."""

import json
import sys
import textwrap

from tests import kernel


def _node_with_ports(ns: str, count: int):
    lines = ["link add br0 type bridge", "link set br0 up", "addr add 10.5.0.1/24 dev br0",
             "addr add fd05::1/64 dev br0 nodad", "route add 10.6.0.0/24 via 10.5.0.9 dev br0"]
    for i in range(count):
        lines += [f"link add va{i} type veth peer name vb{i}", f"link set va{i} master br0 up", f"link set vb{i} up"]
    kernel.sh("ip", "-batch", "-", ns=ns, input="\n".join(lines) + "\n")


def _in_ns(ns: str, code: str):
    program = "import json\nfrom cni import netlink\n" + textwrap.dedent(code)
    proc = kernel.sh(sys.executable, "-c", program, ns=ns)
    return json.loads(proc.stdout)


def test_one_links_addresses_routes_and_ports_among_many(netns):
    ns = netns("pprt")
    _node_with_ports(ns, 40)
    got = _in_ns(ns, """
        with netlink.Namespace() as host:
            br = host.link("br0")
            print(json.dumps({"addresses": sorted(str(a) for a in host.addresses(br.index)),
                              "routes": sorted(map(list, host.routes(br.index))),
                              "ports": sorted(host.ports(br.index)),
                              "lo": [str(a) for a in host.addresses(host.link("lo").index)],
                              "index": br.index}))
    """)
    shown = kernel.ip_json("addr", "show", "dev", "br0", ns=ns)[0]["addr_info"]
    assert got["addresses"] == sorted(f"{a['local']}/{a['prefixlen']}" for a in shown)
    assert len(got["addresses"]) == 3                                 # v4, v6, and the link-local
    assert ["10.6.0.0/24", "10.5.0.9", got["index"]] in got["routes"]
    assert all(oif == got["index"] for _, _, oif in got["routes"])
    lo = kernel.ip_json("addr", "show", "dev", "lo", ns=ns)[0]["addr_info"]
    assert sorted(got["lo"]) == sorted(f"{a['local']}/{a['prefixlen']}" for a in lo)   # no other link's
    ports = [link["ifindex"] for link in kernel.ip_json("link", "show", "master", "br0", ns=ns)]
    assert got["ports"] == sorted(ports) and len(ports) == 40


def test_a_link_without_addresses_or_routes_and_a_bridge_without_ports(netns):
    ns = netns("pprt")
    kernel.sh("ip", "link", "add", "br1", "type", "bridge", ns=ns)
    got = _in_ns(ns, """
        with netlink.Namespace() as host:
            br = host.link("br1")
            print(json.dumps([host.addresses(br.index), host.routes(br.index), host.ports(br.index)]))
    """)
    assert got == [[], [], []]


def test_links_made_and_changed_through_rtnl_look_as_ip_shows_them(netns):
    ns, pod = netns("pprt"), netns("pprt")
    got = _in_ns(ns, f"""
        with netlink.Namespace() as host:
            assert host.add_bridge("br2", mtu=1400) and not host.add_bridge("br2")
            br = host.link("br2")
            assert host.add_veth("vh0", "eth7", "/var/run/netns/{pod}", mtu=1400, peer_mac="0a:58:00:00:00:07")
            port = host.link("vh0")
            host.set_link(port.index, master=br.index, state="up", txqlen=77, ifalias="pod seven")
            host.set_bridge_port(port.index, hairpin=True, isolated=True)
            host.set_link(br.index, state="up")
            host.add_address(br.index, "10.9.0.1/24")
            host.add_address(br.index, "fd09::1/64")
            host.add_route(br.index, "10.10.0.0/16", gateway="10.9.0.254")
            port = host.link(index=port.index)
            print(json.dumps({{"port": [port.master == br.index, port.up, port.hairpin, port.isolated, port.txqlen,
                                        port.alias, port.kind, port.mtu], "missing": host.link("nosuch") is None}}))
    """)
    assert got == {"port": [True, True, True, True, 77, "pod seven", "veth", 1400], "missing": True}
    assert kernel.ip_json("link", "show", "eth7", ns=pod)[0]["address"] == "0a:58:00:00:00:07"
    addrs = {f"{a['local']}/{a['prefixlen']}" for a in kernel.ip_json("addr", "show", "dev", "br2", ns=ns)[0]["addr_info"]}
    assert {"10.9.0.1/24", "fd09::1/64"} <= addrs
    routes = kernel.ip_json("route", "show", "10.10.0.0/16", ns=ns)
    assert routes and routes[0]["gateway"] == "10.9.0.254" and routes[0]["dev"] == "br2"


def test_a_deletion_left_to_the_kernel_in_the_background_is_gone_when_delete_link_returns(netns):
    ns, pod = netns("pprt"), netns("pprt")
    kernel.sh("ip", "link", "add", "vd0", "type", "veth", "peer", "name", "eth0", "netns", pod, ns=ns)
    got = _in_ns(ns, f"""
        netlink.teardown_in_background()
        with netlink.Namespace() as host:
            deleted = host.delete_link("vd0")
            gone = host.link("vd0") is None
            again = host.delete_link("vd0")
            reused = host.add_veth("vd0", "eth0", "/var/run/netns/{pod}")   # both names are free again
        netlink.finish_teardowns()
        print(json.dumps([deleted, gone, again, reused]))
    """)
    assert got == [True, True, False, True]


def test_a_plugin_executable_leaves_the_kernels_wait_to_a_child_that_holds_no_lock(netns, tmp_path):
    ns, pod = netns("pprt"), netns("pprt")
    kernel.sh("ip", "link", "add", "vd1", "type", "veth", "peer", "name", "eth0", "netns", pod, ns=ns)
    lock = tmp_path / "lock"
    got = _in_ns(ns, f"""
        import cni, fcntl, os, time
        cni.EXITS_AFTER_ANSWER = True
        held = os.open("{lock}", os.O_RDWR | os.O_CREAT)
        fcntl.flock(held, fcntl.LOCK_EX)
        with netlink.Namespace("/var/run/netns/{pod}") as inside:      # the pod's end, from inside the pod
            deleted = inside.delete_link("eth0")
            gone = inside.link("eth0") is None
        os.close(held)                    # the child must not hold the lock on after this
        other = os.open("{lock}", os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print(json.dumps([deleted, gone]))
    """)
    assert got == [True, True]
    assert "vd1" not in kernel.sh("ip", "-o", "link", ns=ns).stdout
