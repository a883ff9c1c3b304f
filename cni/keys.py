"""Object keys matched the way the reference plugins' Go JSON decoding matches them.

Go's encoding/json gives a JSON key to the struct field whose name is spelled the same, else to one
whose name matches case-insensitively; when several keys land on one field, the last one wins.
containerd's CNI library relies on this: it sends runtimeConfig entries under Go field names
(`HostPort`, `ContainerPort`, `IngressRate`, `Servers`). Every decoder of ours reads through here.

Standard library only: every plugin call is a new process.
"""

from collections.abc import Iterable


def canonical(obj: dict, fields: Iterable[str]) -> dict:
    """`obj` with each key renamed to the field it decodes into; keys matching no field stay as they are."""
    fields = tuple(fields)
    folded = {}
    for field in fields:
        folded.setdefault(field.casefold(), field)
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            out[key] = value
            continue
        field = key if key in fields else folded.get(key.casefold(), key)
        out.pop(field, None)   # the last key decoding into a field wins, and takes its place in order
        out[field] = value
    return out
