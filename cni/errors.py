"""The one error type of a CNI plugin, carrying a spec error code."""

# Well-known codes of the CNI spec (0-99).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

# podplumb's own codes (100+).
INTERNAL = 100
ADDRESS_EXHAUSTED = 101
ADDRESS_IN_USE = 102
LINK_CONFLICT = 103
PORT_CONFLICT = 104
CHECK_FAILED = 105
KERNEL_FAILURE = 106


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CNIError":
        return cls(int(data.get("code", INTERNAL)), str(data.get("msg", "")), str(data.get("details", "")))

    def __str__(self):
        return f"{self.msg}: {self.details}" if self.details else self.msg


def config_error(msg: str, details: str = "") -> CNIError:
    return CNIError(INVALID_CONFIG, msg, details)
