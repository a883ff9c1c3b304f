"""The overlay registry of one network on one host: claims this host's subnet in etcd and keeps
its lease alive, writes the lease file the vxlan plugin reads, and keeps the VTEP's peer entries
equal to the other hosts registered in etcd (watching them join and leave).

Runs as two threads (lease keep-alive, watch), inside the node daemon or standalone
(`python -m podplumb.overlay`). Every kernel change happens under the network's lock, through the
same VTEP and peer code as the plugin's static mode.
"""

import ipaddress
import logging
import threading

from cni import files, netlink
from cni.errors import CNIError
from plugins.vxlan import lease_file, lock, peers, resolve, underlay, vtep
from podplumb.overlay import subnets
from podplumb.overlay.etcd import Client, EtcdError
from podplumb.overlay.settings import Settings

LOG = logging.getLogger("podplumb")
RETRY_SECONDS = 1.0


class Registry:
    def __init__(self, settings: Settings, client: Client | None = None):
        self.settings = settings
        self.client = client or Client(settings.endpoints)
        self.subnet: ipaddress.IPv4Network | None = None
        self._record: subnets.HostRecord | None = None
        self._lease = 0
        self._peers: list[peers.Peer] | None = None  # None until the registry was first listed
        self._kernel = threading.Lock()              # one reconciliation at a time within this process
        self._stopping = threading.Event()
        self._watch = None
        self._threads = []

    # life cycle
    def start(self):
        """Register (claim the subnet, set up the VTEP, write the lease file), then keep it up in
        the background. Raises when the first registration fails (its etcd lease revoked)."""
        try:
            self._register()
        except BaseException:
            self.stop()
            raise
        for target, name in ((self._keep_alive, "overlay-lease"), (self._follow_peers, "overlay-watch")):
            thread = threading.Thread(target=target, name=f"{name}-{self.settings.conf.network}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self):
        """Stop the threads and revoke the lease, so the other hosts drop this one at once."""
        self._stopping.set()
        self._close_watch()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._lease:
            try:
                self.client.revoke(self._lease)
            except EtcdError as e:
                LOG.warning("overlay %s: cannot revoke lease: %s", self.settings.conf.network, e)

    # registration
    def _register(self):
        s = self.settings
        with netlink.Namespace(s.netns) as host:
            link = underlay.find(host, s.underlay_ip)
        self._record = subnets.HostRecord(s.node, link.ip, vtep.mac_for(link.ip, s.conf.vni))
        self._lease = self.client.grant(s.ttl)
        if s.subnet is not None:
            preferred, required = [s.subnet], True
        else:
            remembered = self.subnet or _remembered(s.remembered_subnet_file)
            usable = remembered is not None and (s.cidr is None or remembered.subnet_of(s.cidr))
            preferred, required = ([remembered] if usable else []), False
        subnet = subnets.claim(self.client, s.prefix, self._record, self._lease, preferred=preferred,
                               required=required, cidr=s.cidr, length=s.subnet_length)
        if self.subnet is not None and subnet != self.subnet:
            LOG.error("overlay %s: lost subnet %s while away, now %s: pods of the old subnet are cut off",
                      s.conf.network, self.subnet, subnet)
        self.subnet = subnet
        _remember(s.remembered_subnet_file, subnet)
        self._apply()
        lease_file.write(s.conf.lease_file, lease_file.HostLease(s.conf.network, subnet, link.ip))
        LOG.info("overlay %s: %s holds %s (underlay %s)", s.conf.network, s.node, subnet, link.ip)

    def _keep_alive(self):
        """Renew the lease a few times per TTL; re-register when it expired. Each round also
        re-applies the peers, repairing entries someone removed."""
        while not self._stopping.wait(self.settings.ttl / 3):
            try:
                if self.client.keepalive(self._lease) <= 0:
                    LOG.warning("overlay %s: lease expired, registering again", self.settings.conf.network)
                    self._register()
                else:
                    self._apply()
            except (EtcdError, CNIError, subnets.ClaimError, OSError) as e:
                LOG.error("overlay %s: keep-alive failed: %s", self.settings.conf.network, e)
                self._close_watch()   # the watch may be stuck on a dead endpoint: reconnect it

    # peers
    def _follow_peers(self):
        """List the registered hosts, then follow changes; on any break, list again."""
        prefix = self.settings.prefix
        while not self._stopping.is_set():
            try:
                revision, held = self.client.range_prefix(prefix)
                values = {kv.key: kv.value for kv in held}
                self._set_peers(values)
                self._watch = self.client.watch(prefix, revision + 1)
                if self._stopping.is_set():
                    self._close_watch()
                for events in self._watch:
                    for event in events:
                        if event.deleted:
                            values.pop(event.key, None)
                        else:
                            values[event.key] = event.value
                    self._set_peers(values)
            except (EtcdError, CNIError, OSError, ValueError) as e:
                if not self._stopping.is_set():
                    LOG.error("overlay %s: watching peers failed: %s", self.settings.conf.network, e)
            self._stopping.wait(RETRY_SECONDS)

    def _set_peers(self, values: dict[str, bytes]):
        """The peers from the registry's entries (key -> record): every host but this one."""
        found = []
        for key, value in values.items():
            subnet, record = subnets.subnet_of(self.settings.prefix, key), subnets.HostRecord.decode(value)
            if subnet is None or record is None:
                LOG.warning("overlay %s: ignoring unreadable registry entry %s", self.settings.conf.network, key)
            elif subnet != self.subnet and record.underlay_ip != self._record.underlay_ip:
                found.append(peers.Peer(record.underlay_ip, subnet, record.vtep_mac))
        with self._kernel:
            self._peers = found
        self._apply()

    def _apply(self):
        """The VTEP as this host's lease says, and (once the registry was listed) exactly the
        known peers' entries on it."""
        conf = self.settings.conf
        with self._kernel, lock.held(conf.lock_file), netlink.Namespace(self.settings.netns) as host:
            spec = resolve.vtep_spec(conf, host, self.subnet, self._record.underlay_ip)
            index, _ = vtep.ensure(host, spec)
            if self._peers is not None:
                peers.sync(host, index, self._peers)

    def _close_watch(self):
        watch = self._watch
        if watch is not None:
            watch.close()


def _remembered(path: str) -> ipaddress.IPv4Network | None:
    try:
        with open(path) as f:
            return ipaddress.IPv4Network(f.read().strip())
    except (OSError, ValueError):
        return None


def _remember(path: str, subnet: ipaddress.IPv4Network):
    files.replace(path, f"{subnet}\n")
