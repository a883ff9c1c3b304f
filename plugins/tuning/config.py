"""tuning's configuration: defaults, then validation."""

import dataclasses
import re

from cni import fields
from cni.errors import config_error
from cni.skel import Request

DEFAULT_DATA_DIR = "/run/podplumb/tuning"
MAX_SYSCTLS = 256
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_SYSCTL_KEY = re.compile(r"net\.[A-Za-z0-9_.\-]+")
FIELDS = dict.fromkeys(("sysctl", "mac", "mtu", "promisc", "allmulti", "txQLen", "dataDir"))   # sysctl: keys are data


@dataclasses.dataclass(frozen=True)
class Config:
    sysctls: tuple          # ((key, value), ...) in config order
    link: dict              # link_settings field -> wanted value (only those asked for)
    data_dir: str


def load(request: Request) -> Config:
    raw = request.config
    link = {}
    # runtimeConfig.mac wins over CNI_ARGS MAC, which wins over the config's mac (as the reference)
    mac = request.runtime_config().get("mac") or request.args.get("MAC") or raw.get("mac")
    if mac is not None:
        if not isinstance(mac, str) or not _MAC.fullmatch(mac):
            raise config_error(f"tuning: invalid mac {mac!r}", "expected six hex bytes separated by ':'")
        if int(mac[:2], 16) & 1:
            raise config_error(f"tuning: mac {mac} is a multicast address", "the first byte must be even")
        link["mac"] = mac.lower()
    if raw.get("mtu") is not None:
        link["mtu"] = fields.integer(raw, "mtu", None, 68, 65535)
    if raw.get("txQLen") is not None:
        link["txqlen"] = fields.integer(raw, "txQLen", None, 0, 2**31 - 1)
    for key, field in (("promisc", "promisc"), ("allmulti", "allmulti")):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise config_error(f"tuning: {key!r} must be a boolean", f"got {value!r}")
        link[field] = value
    data_dir = raw.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise config_error("tuning: 'dataDir' must be an absolute path", f"got {data_dir!r}")
    return Config(sysctls=_sysctls(raw.get("sysctl")), link=link, data_dir=data_dir)


def _sysctls(value) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise config_error("tuning: 'sysctl' must be an object of key -> value strings", f"got {value!r}")
    if len(value) > MAX_SYSCTLS:
        raise config_error(f"tuning: too many sysctls: {len(value)}", f"at most {MAX_SYSCTLS}")
    out = []
    for key, setting in value.items():
        if not _SYSCTL_KEY.fullmatch(key) or ".." in key or key.endswith("."):
            raise config_error(f"tuning: sysctl {key!r} is refused",
                               "only dotted keys under net. (the pod's own network namespace), "
                               "without '/' or '..'")
        if not isinstance(setting, str) or any(c in setting for c in "\n\r\0"):
            raise config_error(f"tuning: sysctl {key} must have a one-line string value", f"got {setting!r}")
        out.append((key, setting))
    return tuple(out)
