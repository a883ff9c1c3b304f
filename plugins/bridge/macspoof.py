"""macspoofchk: frames entering the bridge from a pod's port must carry the pod's own MAC."""

from cni import nftables

TABLE = nftables.Table("podplumb-macspoof", family="bridge")
CHAIN = "prerouting"
_BASE = nftables.BaseChain("filter", "prerouting", -300)


def _rule(host_veth: str, mac: str) -> str:
    return f'iifname "{host_veth}" ether saddr != {mac} drop'


def ensure(network: str, container_id: str, ifname: str, host_veth: str, mac: str):
    rule_tag = nftables.tag(network, container_id, ifname)
    with TABLE.lock():
        listing = TABLE.list()
        script = TABLE.script()
        script.add_table()
        script.add_chain(CHAIN, _BASE)
        for old in listing.tagged(rule_tag):
            script.delete_rule(old)
        script.add_rule(CHAIN, _rule(host_veth, mac), nftables.comment(rule_tag, f"{container_id}/{ifname}"))
        TABLE.apply(script)


def remove(network: str, container_id: str, ifname: str):
    rule_tag = nftables.tag(network, container_id, ifname)
    with TABLE.lock():
        listing = TABLE.list()
        doomed = listing.tagged(rule_tag)
        if doomed:
            TABLE.apply(TABLE.remove(doomed, listing))


def present(network: str, container_id: str, ifname: str) -> bool:
    return bool(TABLE.list().tagged(nftables.tag(network, container_id, ifname)))


def gc(network: str, valid: set):
    keep = {nftables.attachment_hash(network, cid, ifname) for cid, ifname in valid}
    with TABLE.lock():
        listing = TABLE.list()
        doomed = [r for r in listing.of_network(nftables.network_hash(network)) if r.attachment_hash not in keep]
        if doomed:
            TABLE.apply(TABLE.remove(doomed, listing))
