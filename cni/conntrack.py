"""Forgetting conntrack entries of this namespace.

NAT is decided on a flow's first packet: a UDP "connection" tracked before a port was mapped keeps
bypassing the new DNAT rule until conntrack forgets it (UDP entries live on while traffic flows).
pyroute2 is imported only when there is something to forget: most calls map no UDP port."""

import errno


def forget_udp(ports) -> int:
    """Delete the UDP entries, of either family, whose original destination port is in `ports`."""
    ports = set(ports)
    if not ports:
        return 0
    import socket

    from cni.pyroute2_lite import NetlinkError
    from pyroute2.conntrack import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    forgotten = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        ct = Conntrack(nfgen_family=family)   # a conntrack socket lists and deletes one family only
        try:
            for port in ports:
                match = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP, dport=port)
                for entry in list(ct.dump_entries(tuple_orig=match)):
                    try:
                        ct.delete(entry)
                        forgotten += 1
                    except NetlinkError as e:
                        if e.code != errno.ENOENT:   # gone meanwhile: what we wanted
                            raise
        finally:
            ct.close()
    return forgotten
