"""macspoofchk: frames entering the bridge from a pod's port must carry the pod's own MAC."""

from cni import nftables

TABLE = nftables.Table("podplumb-macspoof", family="bridge")
CHAIN = "prerouting"
_BASE = nftables.BaseChain("filter", "prerouting", -300)


def ensure(network: str, container_id: str, ifname: str, host_veth: str, mac: str):
    rule_tag = nftables.tag(network, container_id, ifname)
    rule = f'iifname "{host_veth}" ether saddr != {mac} drop'
    TABLE.replace_tagged(rule_tag, CHAIN, _BASE, [(rule, nftables.comment(rule_tag, f"{container_id}/{ifname}"))])


def remove(network: str, container_id: str, ifname: str):
    TABLE.delete_tagged(nftables.tag(network, container_id, ifname))


def present(network: str, container_id: str, ifname: str) -> bool:
    return bool(TABLE.list().tagged(nftables.tag(network, container_id, ifname)))


def gc(network: str, valid: set):
    TABLE.delete_network_except(network, valid)
