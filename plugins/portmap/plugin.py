"""portmap: host port -> container port DNAT via nftables, chained after a main plugin.

Each operation is one nftables transaction under the namespace's nft lock. An ADD reads nothing
first: it creates the attachment's chain and its host ports' chains, and only when one of them
exists already (a repeated ADD, a host port another attachment holds) reads them to replace its
own rules or name the conflict. DEL reads the attachment's own chain (named from network,
container ID, ifname) and the chains of the host ports it holds, so nothing is stored and no call
lists the whole table but GC (see rules.py)."""

import dataclasses

from cni import conntrack, log, nftables, skel
from cni.errors import CHECK_FAILED, CNIError, IO_FAILURE, NOT_AVAILABLE, config_error
from plugins.portmap import config as configs, localnet, rules
from plugins.portmap.rules import ATTACHMENTS, GUARD, TABLE



def add(request: skel.Request) -> dict:
    config = configs.load(request)
    if config.prev_result is None:
        raise config_error("portmap must be chained after a main plugin", "the config has no prevResult")
    if not config.mappings:
        return config.prev_result
    addresses = _addresses(config, request)
    tag = nftables.tag(request.network, request.container_id, request.ifname)
    wanted = rules.desired(config, addresses, f"{request.container_id}/{request.ifname}")
    chain = ATTACHMENTS.chain_name(request.network, request.container_id, request.ifname)
    snat = [(w.text, nftables.comment(tag, *w.words)) for w in wanted if not w.claim]
    elements = [(f"snat{a.version}", str(a.ip)) for a in addresses] if snat else []
    localnet_ifname = _localnet_interface(config, addresses)   # runs `ip`: not under the lock
    with TABLE.lock():
        try:
            _write_fresh(config, tag, chain, wanted, snat, elements, localnet_ifname)
        except nftables.NftError as e:
            if not e.stale:
                _raise_config_error(e, config)
                raise
            _replace(request, config, tag, chain, wanted, snat, elements, localnet_ifname)
    if localnet_ifname and not localnet.enabled(localnet_ifname):
        _enable_localnet(localnet_ifname, request)
    conntrack.forget_udp(m.host_port for m in config.mappings if m.protocol == "udp")
    return config.prev_result


def _write_fresh(config, tag, chain, wanted, snat, elements, localnet_ifname):
    """The usual ADD, one transaction and nothing read first: the attachment's chain and the chains
    of its host ports are new (`create chain`), and route_localnet, when it is on already, was
    turned on by us (the `ln-` chain exists). The transaction fails when any of that is not so."""
    own = localnet_ifname and not localnet.enabled(localnet_ifname)
    if localnet_ifname:
        snat = snat + [(f"jump {rules.localnet_chain(localnet_ifname)}", None)]
    ports = {w.chain: None for w in wanted if w.claim}
    _write(config, tag, chain, wanted, snat, elements, localnet_ifname, None, ports, fresh=True, make_localnet=own)


def _replace(request, config, tag, chain, wanted, snat, elements, localnet_ifname):
    """ADD when the fresh transaction failed: read the attachment's chain and its host ports' chains,
    name a conflict, take over an address held by a stale attachment."""
    users = localnet_ifname and nftables.chain_use(TABLE.family, TABLE.name, rules.localnet_chain(localnet_ifname))
    if localnet_ifname and users is None and localnet.enabled(localnet_ifname):
        localnet_ifname = None     # turned on by the admin, not by us: leave it be
    if localnet_ifname:
        snat = snat + [(f"jump {rules.localnet_chain(localnet_ifname)}", None)]

    def write():
        old = ATTACHMENTS.read(chain)
        held = _port_chains({w.chain for w in wanted if w.claim} | _claimed(old))
        rules.check_conflicts(wanted, [r for listed in held.values() for r in listed or ()], tag, request.network)
        _write(config, tag, chain, wanted, snat, elements, localnet_ifname, old, held)
    try:
        write()
    except nftables.NftError as e:
        if not e.exists:
            raise
        ATTACHMENTS.take_over(elements, chain)     # a stale attachment holds the address
        write()


def _write(config, tag, chain, wanted, snat, elements, localnet_ifname, old, held, fresh=False,
           make_localnet=True):
    """One transaction: the attachment's old rules out (as read: `old`, `held`), its new ones in."""
    script = ATTACHMENTS.add_base(TABLE.script())
    keep = {w.chain for w in wanted if w.claim}
    _drop_claims(script, held, {tag}, keep)
    if old:
        ATTACHMENTS.delete(script, old)
    for port in sorted(keep):
        if held[port] is None:
            script.create_chain(port) if fresh else script.add_chain(port)
            script.add_element("ports", rules.port_key(port), port)
    for w in wanted:
        if w.claim:
            script.add_rule(w.chain, w.text, nftables.comment(tag, *w.words))
    notes = sorted(keep) + ([rules.localnet_chain(localnet_ifname)] if localnet_ifname else [])
    if localnet_ifname:
        guard = rules.guard_chain(localnet_ifname)
        if make_localnet:
            script.add_chain(rules.localnet_chain(localnet_ifname))
        script.add_chain(guard)
        script.flush_chain(guard)
        script.add_rule(guard, rules.guard_rule())
        script.add_element("guards", f'"{localnet_ifname}"', guard)
    ATTACHMENTS.add(script, chain, tag, snat, elements, notes, fresh=fresh)
    _apply(script, config)


def _claimed(attached) -> set[str]:
    return {n for n in attached.notes if n.startswith(rules.PORT_CHAIN_PREFIX)} if attached else set()


def _port_chains(names, expressions: bool = False) -> dict:
    """{port chain: its rules, None when absent}: one read per port (see `Attachments.read`)."""
    read = TABLE.list_chain if expressions else TABLE.chain_rules
    return {name: read(name) for name in sorted(names)}


def _drop_claims(script, held: dict, tags: set, keep=frozenset()):
    """Delete the DNAT rules carrying one of `tags` from the listed port chains; a port chain left
    empty (and not in `keep`) goes with its `ports` element."""
    for port, listed in held.items():
        if listed is None:
            continue
        doomed = [r for r in listed if r.tag in tags]
        if len(doomed) == len(listed) and port not in keep:
            script.delete_element("ports", rules.port_key(port))
            script.flush_chain(port)
            script.delete_chain(port)
        else:
            for rule in doomed:
                script.delete_rule(rule)


def delete(request: skel.Request) -> None:
    tag = nftables.tag(request.network, request.container_id, request.ifname)
    chain = ATTACHMENTS.chain_name(request.network, request.container_id, request.ifname)
    with TABLE.lock():
        old = ATTACHMENTS.read(chain)
        if old:
            held = _port_chains(_claimed(old))
            # The last attachment relying on route_localnet of an interface (its `ln-` chain has no
            # other user) releases it in the same transaction.
            last = [n for n in old.notes if rules.localnet_interface(n)
                    and (nftables.chain_use(TABLE.family, TABLE.name, n) or 0) <= 1]

            def script(releasing):
                script = TABLE.script()
                _drop_claims(script, held, {tag})
                ATTACHMENTS.delete(script, old)
                for note in releasing:
                    _release_script(script, note)
                return script
            try:
                TABLE.apply(script(last))
            except nftables.NftError as e:
                if not (last and e.stale):
                    raise
                TABLE.apply(script([]))
                for note in last:
                    _release_localnet(note)
                last = []
            for note in last:
                localnet.reset(rules.localnet_interface(note))
    _after_legacy_removal(*nftables.remove_legacy(rules.LEGACY_TABLE, request.network, request.container_id,
                                                  request.ifname))


def check(request: skel.Request) -> None:
    config = configs.load(request)
    if config.prev_result is None:
        raise config_error("portmap CHECK needs prevResult", "the config has no prevResult")
    tag = nftables.tag(request.network, request.container_id, request.ifname)
    chain = ATTACHMENTS.chain_name(request.network, request.container_id, request.ifname)
    attached = ATTACHMENTS.read(chain, expressions=True)
    if not config.mappings and not attached:
        return
    addresses = _addresses(config, request)
    wanted = rules.desired(config, addresses, "")
    held = _port_chains({w.chain for w in wanted if w.claim} | _claimed(attached), expressions=True)
    actual = [r for listed in held.values() for r in listed or () if r.tag == tag]
    actual += [dataclasses.replace(r, chain=rules.SNAT) for r in (attached.rules if attached else ()) if r.tag]
    problems = rules.base_problems({c: TABLE.list_chain(c) for c in (rules.PREROUTING, rules.OUTPUT)})
    if attached is None:
        problems.append(f"chain {chain} of the attachment is missing")
    for port, listed in held.items():
        if listed is not None and ATTACHMENTS.holder("ports", rules.port_key(port)) != port:
            problems.append(f"host port {rules.port_key(port)} does not lead to chain {port}")
    for map_name, key in attached.elements if attached else ():
        if ATTACHMENTS.holder(map_name, key) != chain:
            problems.append(f"{key} does not lead to chain {chain} (map {map_name})")
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
    """Remove this network's attachments that are not valid, with their DNAT rules (found by tag);
    the table goes when no attachment is left. GC lists the table once."""
    valid = request.config.get("cni.dev/valid-attachments") or []
    if not isinstance(valid, list) or not all(isinstance(a, dict) for a in valid):
        raise config_error("cni.dev/valid-attachments must be a list of objects", f"got {valid!r}")
    net_hash = nftables.network_hash(request.network)
    keep = {nftables.attachment_hash(request.network, a.get("containerID", ""), a.get("ifname", "")) for a in valid}
    with TABLE.lock():
        listing = TABLE.list()
        if listing.exists:
            ours = ATTACHMENTS.attachment_chains(listing)
            stale = [c for c, (n, a) in ours.items() if n == net_hash and a not in keep]
            doomed_tags = {r.tag for r in listing.rules if r.network_hash == net_hash and r.attachment_hash not in keep}
            held = {c: listing.in_chain(c) for c in listing.chains if c.startswith(rules.PORT_CHAIN_PREFIX)}
            script = TABLE.script()
            _drop_claims(script, held, doomed_tags)
            for c in sorted(stale):
                ATTACHMENTS.delete(script, nftables.attachments_read(c, listing.in_chain(c)))
            TABLE.apply(script)
            for c in sorted(listing.chains):
                _release_localnet(c)
            if len(stale) == len(ours):
                drop = TABLE.script()
                drop.delete_table()
                TABLE.apply(drop)
    pairs = {(a.get("containerID", ""), a.get("ifname", "")) for a in valid}
    _after_legacy_removal(*nftables.gc_legacy(rules.LEGACY_TABLE, request.network, pairs))


def status(request: skel.Request) -> None:
    try:
        TABLE.apply(ATTACHMENTS.add_base(TABLE.script()), check_only=True)
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
        _raise_config_error(e, config)
        raise


def _raise_config_error(e: nftables.NftError, config: configs.Config):
    tokens = [t for family in (4, 6) for t in config.conditions[family]]
    if tokens and any(t in e.stderr for t in tokens):
        raise config_error("portmap: nftables rejected conditionsV4/conditionsV6", e.details) from None


def _enable_localnet(ifname: str, request: skel.Request):
    try:
        localnet.set_enabled(ifname, True)
    except OSError as e:
        delete(request)
        raise CNIError(IO_FAILURE, f"portmap: cannot turn route_localnet on for {ifname}", str(e)) from None
    log.logger().info("portmap: turned route_localnet on for %s (localhost host ports)", ifname)


def _release_script(script: nftables.Script, chain: str):
    """Delete the guard of the interface an ln-<hex> chain stands for, and the chain."""
    ifname = rules.localnet_interface(chain)
    guard = rules.guard_chain(ifname)
    script.delete_element("guards", f'"{ifname}"')
    script.flush_chain(guard)
    script.delete_chain(guard)
    script.delete_chain(chain)


def _release_localnet(chain: str):
    """With no attachment jumping to ln-<ifname> any more (the kernel refuses to delete a chain
    still referenced), its guard goes and route_localnet goes back off."""
    ifname = rules.localnet_interface(chain)
    if ifname is None:
        return
    script = TABLE.script()
    _release_script(script, chain)
    try:
        TABLE.apply(script)
    except nftables.NftError as e:
        if e.busy or e.missing:
            return     # still in use, or released already
        raise
    localnet.reset(ifname)


def _after_legacy_removal(listing, table_dropped: bool):
    """The former layout's table: with its last rule gone, route_localnet goes back off where its
    guard rules say we turned it on."""
    if table_dropped:
        for rule in listing.in_chain(GUARD):
            words = rule.comment.split()
            if len(words) == 2 and words[0] == "route_localnet":
                localnet.reset(words[1])


PLUGIN = skel.Plugin(name="portmap", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=configs.FIELDS)
