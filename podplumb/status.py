"""`podplumb status`: the configured networks and the attachments podplumb's plugins made."""

import json
import os

from podplumb import attachments


def configured_networks(conf_dir: str) -> list[str]:
    """Network names of the configs in conf_dir (*.conf, *.conflist, *.json) that parse."""
    names = []
    try:
        files = sorted(os.listdir(conf_dir))
    except OSError:
        return names
    for name in files:
        if not name.endswith((".conf", ".conflist", ".json")):
            continue
        try:
            with open(os.path.join(conf_dir, name)) as f:
                network = json.load(f).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(network, str) and network not in names:
            names.append(network)
    return names


def show(state_dir: str, conf_dir: str, as_json: bool = False, out=print) -> int:
    found = attachments.load(state_dir)
    networks = configured_networks(conf_dir)
    if as_json:
        out(json.dumps({"networks": [{"name": n, "configured": n in networks,
                                      "attachments": sum(1 for a in found if a.network == n)}
                                     for n in sorted(set(networks) | {a.network for a in found})],
                        "attachments": [a.as_dict() for a in found]}, indent=2))
        return 0
    out(f"networks in {conf_dir}: {', '.join(networks) or 'none'}")
    rows = [("NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "HOST PORTS", "STATE")]
    for a in found:
        rows.append((a.network, a.container_id[:20], a.ifname, ",".join(a.addresses()) or "-",
                     ",".join(a.host_ports()) or "-", a.state()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if not found:
        out(f"no attachments recorded in {state_dir}")
    return 0
