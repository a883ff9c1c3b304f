"""`podplumb gc`: remove attachments whose pod network namespace is gone, through each plugin's own
DEL (in reverse chain order, as the runtime would have called it), so that leases, host links,
nftables rules and host ports go exactly as a DEL removes them. An attachment whose namespace is
still there, or whose namespace cannot be judged (no CNI_NETNS recorded), is never touched."""

import json
import logging
import os

from cni import result as results
from podplumb import attachments
from podplumb.runtime import exec_plugin
from podplumb.status import configured_networks

LOG = logging.getLogger("podplumb.gc")


def collect(state_dir: str, bin_dir: str, dry_run: bool = False, out=print, conf_dir: str | None = None) -> int:
    """Remove the stale attachments; 0, or 1 when a DEL failed (its records stay for the next run).
    With `conf_dir`, say which stale attachments belong to a network no longer configured there
    (they are removed all the same, with the config recorded at their ADD)."""
    found = attachments.load(state_dir)
    stale = [a for a in found if a.state() == "stale"]
    configured = set(configured_networks(conf_dir)) if conf_dir else None
    for network in sorted({a.network for a in stale} - (configured or set())) if configured is not None else []:
        out(f"network {network} is no longer configured in {conf_dir}; its attachments go with the config "
            "recorded at their ADD")
    code = 0
    for attachment in stale:
        what = (f"{attachment.network} {attachment.container_id} {attachment.ifname} "
                f"({' '.join(r.type for r in attachment.chain)}; {', '.join(attachment.addresses()) or 'no address'}"
                f"{'; ports ' + ', '.join(attachment.host_ports()) if attachment.host_ports() else ''})")
        if dry_run:
            out(f"would remove {what}: netns {attachment.netns} is gone")
            continue
        problem = delete(attachment, state_dir, bin_dir)
        if problem:
            out(f"FAILED to remove {what}: {problem}")
            code = 1
        else:
            out(f"removed {what}")
    out(f"{len(stale)} stale, {len(found) - len(stale)} other attachment(s) left alone")
    return code


def delete(attachment: attachments.Attachment, state_dir: str, bin_dir: str) -> str | None:
    """DEL through every plugin of the chain, newest first; what went wrong, or None."""
    final = attachment.final_result()
    for record in reversed(attachment.chain):
        executable = os.path.join(bin_dir, record.type)
        if not os.access(executable, os.X_OK):
            return f"no executable {executable} for {record.type}"
        config = dict(record.config)
        config.pop("prevResult", None)
        if final and isinstance(config.get("cniVersion"), str):
            try:
                config["prevResult"] = results.to_version(final, config["cniVersion"])
            except Exception:   # a result the version cannot express: DEL works without prevResult
                pass
        run = exec_plugin(bin_dir, record.type, "DEL", config, container_id=attachment.container_id,
                          netns="", ifname=attachment.ifname, cni_args=record.args,
                          env={"PODPLUMB_STATE_DIR": state_dir})
        if run.code != 0:
            try:
                return f"{record.type} DEL: {json.loads(run.stdout)['msg']}"
            except (ValueError, KeyError, TypeError):
                return f"{record.type} DEL exited {run.code}: {run.stderr.decode(errors='replace')[-300:]}"
    return None
