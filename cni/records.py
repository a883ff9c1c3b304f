"""A small record per attachment, so that `podplumb gc` can find attachments whose pod is gone
(runtimes do not always send DEL: `ctr run -d` never does, a crashed runtime cannot) and remove
them through the plugins' own DEL.

skel writes one file per plugin of a chain on a successful ADD and removes it on DEL:

    <state dir>/<network>/<container ID>/<ifname>/<type>.json

holding the config the runtime gave (with prevResult), CNI_ARGS, CNI_PATH, CNI_NETNS and that
namespace's identity (device, inode: a path reused by a later pod is not the same pod), the result,
and when it was added (the chain's order). The state dir is PODPLUMB_STATE_DIR (from the call's
environment, else this process's), default /var/lib/cni/podplumb. A record that cannot be written
never fails the call: it is logged, and that attachment is invisible to gc.
"""

import contextlib
import json
import os
import time

from cni import files, log

DEFAULT_STATE_DIR = "/var/lib/cni/podplumb"
SUFFIX = ".json"


def state_dir(env) -> str:
    return env.get("PODPLUMB_STATE_DIR") or os.environ.get("PODPLUMB_STATE_DIR") or DEFAULT_STATE_DIR


class Record:
    """One attachment record, as read back (podplumb gc and attachments)."""
    __slots__ = ("path", "network", "container_id", "ifname", "type", "netns", "netns_id", "args", "cni_path",
                 "config", "result", "added")

    def __init__(self, path: str, network: str, container_id: str, ifname: str, type: str, netns: str,
                 netns_id: tuple | None,     # (st_dev, st_ino) of the namespace at ADD
                 args: str, cni_path: str, config: dict, result: dict, added: float):
        self.path = path
        self.network = network
        self.container_id = container_id
        self.ifname = ifname
        self.type = type
        self.netns = netns
        self.netns_id = netns_id
        self.args = args
        self.cni_path = cni_path
        self.config = config
        self.result = result
        self.added = added

    def netns_alive(self) -> bool | None:
        """Whether the pod's namespace is still the one of the ADD; None when there is no way to know."""
        if not self.netns:
            return None
        try:
            st = os.stat(self.netns)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        return self.netns_id is None or (st.st_dev, st.st_ino) == tuple(self.netns_id)


def _attachment_dir(root: str, network: str, container_id: str, ifname: str) -> str:
    return os.path.join(root, network, container_id, ifname)


def _identity(request) -> tuple | None:
    try:
        st = os.stat(request.netns)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remember(request, result: dict):
    """After a successful ADD."""
    plugin_type = request.config.get("type")
    if not (request.network and request.container_id and request.ifname and isinstance(plugin_type, str)):
        return
    path = os.path.join(_attachment_dir(state_dir(request.env), request.network, request.container_id,
                                        request.ifname), plugin_type + SUFFIX)
    record = {"network": request.network, "containerID": request.container_id, "ifname": request.ifname,
              "type": plugin_type, "netns": request.netns, "netnsId": _identity(request),
              "args": request.env.get("CNI_ARGS", ""), "path": request.env.get("CNI_PATH", ""),
              "config": json.loads(request.stdin), "result": result, "added": time.time()}
    try:
        files.replace(path, json.dumps(record))
    except (OSError, ValueError) as e:
        log.logger().warning("cannot record the attachment for podplumb gc at %s: %s", path, e)


def forget(request):
    """After a successful DEL: the plugin's record, and directories left empty."""
    plugin_type = request.config.get("type")
    if not (request.network and request.container_id and request.ifname and isinstance(plugin_type, str)):
        return
    directory = _attachment_dir(state_dir(request.env), request.network, request.container_id, request.ifname)
    try:
        os.unlink(os.path.join(directory, plugin_type + SUFFIX))
    except FileNotFoundError:
        return
    except OSError as e:
        log.logger().warning("cannot remove the attachment record in %s: %s", directory, e)
        return
    _remove_empty(directory, levels=2)


def prune(request, valid: set):
    """After a successful GC: records of this network and plugin whose attachment is not `valid`
    ({(container ID, ifname)})."""
    plugin_type = request.config.get("type")
    if not request.network or not isinstance(plugin_type, str):
        return
    for record in load_all(state_dir(request.env), request.network):
        if record.type == plugin_type and (record.container_id, record.ifname) not in valid:
            with contextlib.suppress(OSError):
                os.unlink(record.path)
            _remove_empty(os.path.dirname(record.path), levels=2)


def load_all(root: str, network: str | None = None) -> list[Record]:
    """Every readable record (of one network), oldest first."""
    found = []
    for net in _listdir(root) if network is None else [network]:
        for container_id in _listdir(os.path.join(root, net)):
            for ifname in _listdir(os.path.join(root, net, container_id)):
                directory = os.path.join(root, net, container_id, ifname)
                for name in _listdir(directory):
                    if name.endswith(SUFFIX):
                        record = _read(os.path.join(directory, name))
                        if record:
                            found.append(record)
    return sorted(found, key=lambda r: r.added)


def _read(path: str) -> Record | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return Record(path=path, network=data["network"], container_id=data["containerID"], ifname=data["ifname"],
                      type=data["type"], netns=data.get("netns") or "", netns_id=data.get("netnsId"),
                      args=data.get("args") or "", cni_path=data.get("path") or "", config=data["config"],
                      result=data.get("result") or {}, added=float(data.get("added") or 0))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.logger().warning("unreadable attachment record %s: %s", path, e)
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (NotADirectoryError, FileNotFoundError):
        return []


def _remove_empty(directory: str, levels: int):
    for _ in range(levels):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)
