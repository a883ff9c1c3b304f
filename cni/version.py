"""CNI spec versions: which we speak, and how a config chooses one."""

import json

from cni.errors import CNIError, INCOMPATIBLE_VERSION, DECODE_FAILURE

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = SUPPORTED[-1]


def parse(version: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in version.split("."))
    except (AttributeError, ValueError):
        raise CNIError(DECODE_FAILURE, f"invalid cniVersion {version!r}", "expected MAJOR.MINOR.PATCH") from None
    if len(parts) != 3:
        raise CNIError(DECODE_FAILURE, f"invalid cniVersion {version!r}", "expected MAJOR.MINOR.PATCH")
    return parts


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def choose(config: dict) -> str:
    """The version a config asks for: `cniVersion`, else the newest of `cniVersions` we speak."""
    version = config.get("cniVersion")
    if version is None and isinstance(config.get("cniVersions"), list):
        ours = [v for v in config["cniVersions"] if v in SUPPORTED]
        if not ours:
            raise CNIError(INCOMPATIBLE_VERSION, "none of cniVersions is supported",
                           f"asked {config['cniVersions']}, supported {list(SUPPORTED)}")
        return max(ours, key=parse)
    if version is None:
        raise CNIError(DECODE_FAILURE, "missing cniVersion", "the network config has no 'cniVersion'")
    if not isinstance(version, str):
        raise CNIError(DECODE_FAILURE, "cniVersion must be a string", f"got {version!r}")
    parse(version)
    if version not in SUPPORTED:
        raise CNIError(INCOMPATIBLE_VERSION, f"unsupported cniVersion {version}",
                       f"supported: {', '.join(SUPPORTED)}")
    return version


def version_reply(stdin: bytes, supported=SUPPORTED) -> bytes:
    """The answer to CNI_COMMAND=VERSION; needs nothing but this module, so it is cheap."""
    asked = CURRENT
    if stdin.strip():
        try:
            asked = json.loads(stdin).get("cniVersion", asked)
        except (ValueError, AttributeError, RecursionError):
            pass
    if asked not in SUPPORTED:
        asked = CURRENT
    return (json.dumps({"cniVersion": asked, "supportedVersions": list(supported)}, indent=2) + "\n").encode()
