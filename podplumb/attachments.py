"""Attachments as the records of cni.records describe them: one per (network, container ID, ifname),
with the chain of plugins that made it, its addresses and host ports, and whether its pod is still there."""

import dataclasses
import ipaddress

from cni import records


@dataclasses.dataclass
class Attachment:
    network: str
    container_id: str
    ifname: str
    chain: list            # records.Record, in the order of their ADD

    @property
    def netns(self) -> str:
        return self.chain[0].netns

    def state(self) -> str:
        """'live', 'stale' (its network namespace is gone, or is another one now) or 'unknown'."""
        alive = self.chain[0].netns_alive()
        return "unknown" if alive is None else "live" if alive else "stale"

    def final_result(self) -> dict:
        """The chain's result, as the runtime holds it (the last plugin's)."""
        return self.chain[-1].result

    def addresses(self) -> list[str]:
        return [ip["address"] for ip in self.final_result().get("ips") or [] if isinstance(ip, dict) and "address" in ip]

    def host_ports(self) -> list[str]:
        ports = []
        for record in self.chain:
            mappings = (record.config.get("runtimeConfig") or {}).get("portMappings") or []
            for m in mappings if isinstance(mappings, list) else []:
                if isinstance(m, dict) and m.get("hostPort"):
                    host = m.get("hostIP") or ""
                    host = f"[{host}]" if host and ipaddress.ip_address(host).version == 6 else host
                    ports.append(f"{m.get('protocol') or 'tcp'}/{host + ':' if host else ''}{m['hostPort']}"
                                 f"->{m.get('containerPort')}")
        return ports

    def as_dict(self) -> dict:
        return {"network": self.network, "containerID": self.container_id, "ifname": self.ifname,
                "netns": self.netns, "state": self.state(), "plugins": [r.type for r in self.chain],
                "addresses": self.addresses(), "hostPorts": self.host_ports()}


def load(state_dir: str) -> list[Attachment]:
    grouped = {}
    for record in records.load_all(state_dir):
        key = (record.network, record.container_id, record.ifname)
        grouped.setdefault(key, Attachment(*key, chain=[])).chain.append(record)
    return sorted(grouped.values(), key=lambda a: (a.network, a.container_id, a.ifname))
