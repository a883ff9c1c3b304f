"""macspoofchk: frames entering the bridge from a pod's port must carry the pod's own MAC.

Table `bridge podplumb-macspoofchk`: the prerouting chain looks the input port up in map `ports`,
whose element for the pod's host-side veth jumps to the attachment's chain (`ether saddr != MAC drop`).
"""

from cni import nftables

CHECK = nftables.Attachments(
    nftables.Table("podplumb-macspoofchk", family="bridge"),
    {"prerouting": nftables.BaseChain("filter", "prerouting", -300)},
    (nftables.VerdictMap("ports", "ifname", "prerouting", "iifname"),))
LEGACY_TABLE = nftables.Table("podplumb-macspoof", family="bridge")


def ensure(network: str, container_id: str, ifname: str, host_veth: str, mac: str):
    note = nftables.comment(nftables.tag(network, container_id, ifname), f"{container_id}/{ifname}")
    CHECK.replace(network, container_id, ifname, [(f"ether saddr != {mac} drop", note)],
                  [("ports", host_veth)])


def remove(network: str, container_id: str, ifname: str):
    CHECK.remove(network, container_id, ifname)
    nftables.remove_legacy(LEGACY_TABLE, network, container_id, ifname)


def present(network: str, container_id: str, ifname: str) -> bool:
    chain = CHECK.chain_name(network, container_id, ifname)
    attached = CHECK.read(chain)
    return bool(attached and attached.rules and attached.elements
                and all(CHECK.holder(m, key) == chain for m, key in attached.elements))


def gc(network: str, valid: set):
    CHECK.gc(network, valid)
    nftables.gc_legacy(LEGACY_TABLE, network, valid)
