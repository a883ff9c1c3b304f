"""tuning: set sysctls and interface settings in the pod, remember the originals, put them back on DEL."""

import errno
import json
import logging
import os

from cni import chained, files, link_settings, netlink, skel, sysctl
from cni.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, IO_FAILURE, UNKNOWN_CONTAINER, config_error
from cni.rollback import Rollback
from plugins.tuning import config as configs

LOG = logging.getLogger("podplumb")


def add(request: skel.Request) -> dict:
    conf = configs.load(request)
    prev = chained.prev_result(request, "tuning")
    state_path = _state_path(conf, request)
    with netlink.Namespace(request.netns) as pod, Rollback() as undo:
        before = link_settings.read(pod, request.ifname)
        # A repeated ADD keeps the first ADD's originals: they are the interface's own values.
        saved = _read_state(state_path) or {"link": {}, "sysctl": {}}
        original_sysctls = {key: _read_sysctl(request.netns, key) for key, _ in conf.sysctls}
        for key, value in original_sysctls.items():
            saved["sysctl"].setdefault(key, value)
        original_link = {f: v for f, v in before.values().items() if f in conf.link}
        for field, value in original_link.items():
            saved["link"].setdefault(field, value)
        files.replace(state_path, json.dumps(saved))
        undo.push("state file", lambda: _remove(state_path))
        undo.push("sysctls", lambda: _restore_sysctls(request.netns, original_sysctls))
        for key, value in conf.sysctls:
            _write_sysctl(request.netns, key, value)
        undo.push("link settings", lambda: link_settings.apply(pod, before.index, original_link))
        link_settings.apply(pod, before.index, conf.link)
        mac = link_settings.read(pod, request.ifname).mac
    return _with_mac(prev, request.ifname, mac) if "mac" in conf.link else prev


def delete(request: skel.Request) -> None:
    conf = configs.load(request)
    state_path = _state_path(conf, request)
    saved = _read_state(state_path)
    if saved is None:
        return
    if request.netns and os.path.exists(request.netns):
        try:
            with netlink.Namespace(request.netns) as pod:
                link = pod.link(request.ifname)
                if link is not None:
                    link_settings.apply(pod, link.index, saved.get("link", {}))
            _restore_sysctls(request.netns, saved.get("sysctl", {}))
        except CNIError as e:
            if e.code != UNKNOWN_CONTAINER:   # the namespace went away meanwhile: nothing to restore
                raise
    _remove(state_path)


def check(request: skel.Request) -> None:
    conf = configs.load(request)
    prev = chained.prev_result(request, "tuning")
    problems = []
    for key, value in conf.sysctls:
        actual = _read_sysctl(request.netns, key)
        if actual.split() != value.split():
            problems.append(f"sysctl {key} is {actual!r}, expected {value!r}")
    with netlink.Namespace(request.netns) as pod:
        actual = link_settings.read(pod, request.ifname).values()
    for field, wanted in conf.link.items():
        if actual[field] != wanted:
            problems.append(f"{field} is {actual[field]!r}, expected {wanted!r}")
    index = chained.interface_index(prev, request.ifname)
    if index is not None and prev["interfaces"][index].get("mac", actual["mac"]).lower() != actual["mac"]:
        problems.append(f"mac is {actual['mac']}, prevResult says {prev['interfaces'][index]['mac']}")
    if not os.path.exists(_state_path(conf, request)) and (conf.link or conf.sysctls):
        problems.append("the originals to restore on DEL are missing")
    if problems:
        raise CNIError(CHECK_FAILED, f"tuning of {request.ifname} in {request.netns} differs from its config",
                       "; ".join(problems))


def gc(request: skel.Request) -> None:
    """Forget the saved originals of attachments that are no longer valid (their pods are gone)."""
    conf = configs.load(request)
    keep = {f"{container_id}-{ifname}.json" for container_id, ifname in chained.valid_attachments(request)}
    try:
        names = os.listdir(conf.data_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".json") and name not in keep:
            _remove(os.path.join(conf.data_dir, name))


def status(request: skel.Request) -> None:
    configs.load(request)


def _state_path(conf: configs.Config, request: skel.Request) -> str:
    return os.path.join(conf.data_dir, f"{request.container_id}-{request.ifname}.json")


def _read_state(path: str) -> dict | None:
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        LOG.warning("tuning: unreadable state file %s ignored", path)
        return None
    return saved if isinstance(saved, dict) else None


def _remove(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_sysctl(netns: str, key: str) -> str:
    try:
        return sysctl.read_in(netns, key)
    except FileNotFoundError:
        raise config_error(f"tuning: sysctl {key} does not exist in the pod's namespace") from None
    except OSError as e:
        raise CNIError(IO_FAILURE, f"tuning: cannot read sysctl {key}", e.strerror or str(e)) from None


def _write_sysctl(netns: str, key: str, value: str):
    try:
        sysctl.write_in(netns, key, value)
    except OSError as e:
        code = INVALID_CONFIG if e.errno in (errno.EINVAL, errno.ERANGE, errno.ENOENT) else IO_FAILURE
        raise CNIError(code, f"tuning: cannot set sysctl {key} to {value!r}", e.strerror or str(e)) from None


def _restore_sysctls(netns: str, values: dict):
    for key, value in values.items():
        try:
            sysctl.write_in(netns, key, value)
        except OSError as e:   # e.g. a per-interface key of an interface that is gone
            LOG.warning("tuning: cannot restore sysctl %s: %s", key, e)


def _with_mac(prev: dict, ifname: str, mac: str) -> dict:
    out = dict(prev, interfaces=[dict(i) for i in prev.get("interfaces") or []])
    index = chained.interface_index(out, ifname)
    if index is not None:
        out["interfaces"][index]["mac"] = mac
    return out


PLUGIN = skel.Plugin(name="tuning", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=configs.FIELDS)
