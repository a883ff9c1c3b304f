"""portmap: host port -> container port DNAT via nftables, chained after a main plugin.

Each operation is one nftables transaction under the namespace's nft lock; rules are found by their tag
(network, container ID, ifname), so nothing is stored."""

import logging

from cni import conntrack, nftables, skel
from cni.errors import CHECK_FAILED, CNIError, IO_FAILURE, NOT_AVAILABLE, config_error
from plugins.portmap import config as configs, localnet, rules
from plugins.portmap.rules import TABLE

LOG = logging.getLogger("podplumb")


def add(request: skel.Request) -> dict:
    config = configs.load(request)
    if config.prev_result is None:
        raise config_error("portmap must be chained after a main plugin", "the config has no prevResult")
    if not config.mappings:
        return config.prev_result
    addresses = _addresses(config, request)
    tag = nftables.tag(request.network, request.container_id, request.ifname)
    wanted = rules.desired(config, addresses, f"{request.container_id}/{request.ifname}")
    localnet_ifname = _localnet_interface(config, addresses)   # runs `ip`: not under the lock
    if localnet_ifname and localnet.enabled(localnet_ifname):
        localnet_ifname = None     # on already (by us earlier, or by the admin): leave it be
    with TABLE.lock():
        listing = TABLE.list()
        rules.check_conflicts(wanted, listing, tag, request.network)
        script = rules.add_base(TABLE.script())
        for old in listing.tagged(tag):
            script.delete_rule(old)
        for w in wanted:
            script.add_rule(w.chain, w.text, nftables.comment(tag, *w.words))
        if localnet_ifname and localnet_ifname not in rules.guarded_interfaces(listing):
            script.add_rule(rules.GUARD, *rules.guard_rule(localnet_ifname))
        _apply(script, config)
    if localnet_ifname:
        _enable_localnet(localnet_ifname, tag)
    conntrack.forget_udp(m.host_port for m in config.mappings if m.protocol == "udp")
    return config.prev_result


def delete(request: skel.Request) -> None:
    _after_removal(*TABLE.delete_tagged(nftables.tag(request.network, request.container_id, request.ifname)))


def check(request: skel.Request) -> None:
    config = configs.load(request)
    if config.prev_result is None:
        raise config_error("portmap CHECK needs prevResult", "the config has no prevResult")
    tag = nftables.tag(request.network, request.container_id, request.ifname)
    listing = TABLE.list()
    actual = listing.tagged(tag)
    if not config.mappings and not actual:
        return
    addresses = _addresses(config, request)
    wanted = rules.desired(config, addresses, "")
    problems = rules.base_problems(listing)
    unmatched, extra = rules.missing(wanted, actual)
    problems += [f"missing in {w.chain}: {w.text}" for w in unmatched]
    problems += [f"unexpected rule in {r.chain} (handle {r.handle})" for r in extra]
    ifname = _localnet_interface(config, addresses)
    if ifname and not localnet.enabled(ifname):
        problems.append(f"route_localnet is off on {ifname}")
    if problems:
        raise CNIError(CHECK_FAILED, f"portmap rules of container {request.container_id} ({request.ifname}) "
                       "do not match its port mappings", "; ".join(problems))


def gc(request: skel.Request) -> None:
    valid = request.config.get("cni.dev/valid-attachments") or []
    if not isinstance(valid, list) or not all(isinstance(a, dict) for a in valid):
        raise config_error("cni.dev/valid-attachments must be a list of objects", f"got {valid!r}")
    keep = {(a.get("containerID", ""), a.get("ifname", "")) for a in valid}
    _after_removal(*TABLE.delete_network_except(request.network, keep))


def status(request: skel.Request) -> None:
    try:
        TABLE.apply(rules.add_base(TABLE.script()), check_only=True)
    except CNIError as e:
        raise CNIError(NOT_AVAILABLE, "portmap cannot use nftables", str(e)) from None


def _addresses(config: configs.Config, request: skel.Request) -> list:
    addresses = configs.container_addresses(config.prev_result, request.ifname)
    if not addresses:
        raise config_error(f"portmap: prevResult has no address for interface {request.ifname}",
                           "nothing to map the host ports to")
    return addresses


def _localnet_interface(config: configs.Config, addresses) -> str | None:
    """The host interface needing route_localnet, so that 127.0.0.1:hostPort reaches the container."""
    v4 = [a for a in addresses if a.version == 4]
    if not (config.snat and v4 and any(m.host_ip_for(4)[0] for m in config.mappings)):
        return None
    return localnet.route_interface(str(v4[0].ip))


def _apply(script: nftables.Script, config: configs.Config):
    try:
        TABLE.apply(script)
    except nftables.NftError as e:
        tokens = [t for family in (4, 6) for t in config.conditions[family]]
        if tokens and any(t in e.stderr for t in tokens):
            raise config_error("portmap: nftables rejected conditionsV4/conditionsV6", e.details) from None
        raise


def _enable_localnet(ifname: str, tag: str):
    try:
        localnet.set_enabled(ifname, True)
    except OSError as e:
        _after_removal(*TABLE.delete_tagged(tag))
        raise CNIError(IO_FAILURE, f"portmap: cannot turn route_localnet on for {ifname}", str(e)) from None
    LOG.info("portmap: turned route_localnet on for %s (localhost host ports)", ifname)


def _after_removal(listing: nftables.Listing, table_dropped: bool):
    """With the last container's rules gone, route_localnet goes back off where we turned it on."""
    if table_dropped:
        for ifname in rules.guarded_interfaces(listing):
            localnet.reset(ifname)


PLUGIN = skel.Plugin(name="portmap", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=configs.FIELDS)
