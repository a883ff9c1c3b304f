"""The lease index: every lease of a network in one file, so that an operation reads one file instead
of every lease (the reference reads them all on each ADD and DEL).

A cache, never the truth. It records the state of the lease directory it was written for, (st_ino,
st_ctime_ns) of the directory: any change of an entry (a lease made or removed by the reference
plugin, a file left by a writer killed mid-operation, an edit by hand) moves the directory's ctime,
and an index recorded for another state is not used: the directory is read instead and the index
written again. The ctime rather than the mtime: only the kernel sets it (`touch -d`, `cp -a` or
`tar` set an mtime, and could give a changed directory the one recorded). Writing the index does not change the directory (its content is rewritten
in place; the file is created before an operation's changes), so an index written after an
operation's changes stays current until someone else changes the directory.

    podplumb-lease-index 1 <st_ino> <st_ctime_ns> <number of leases N>
    <address>                                   N lines
    <holder>                                    N lines, in the same order: "containerID ifname",
    end                                         or the container ID alone (the older format)

(Addresses and holders apart, so that the file is read and written by a few calls on whole lists.)
The reference plugin walks every file of the directory and takes as the attachment's lease any file
whose trimmed content is "containerID\\r\\nifname" or the container ID alone: a valid container ID
has no space, and this file's first line has several.
"""

import os

NAME = "podplumb-leases"
_MAGIC = "podplumb-lease-index 1"
_END = "end"

Table = dict[str, str]   # address (its canonical text) -> holder (`holder_words`)


def state(path: str) -> tuple[int, int]:
    """The directory's identity and the time of its last change, as the index records them."""
    st = os.stat(path)
    return st.st_ino, st.st_ctime_ns


def parse(data: bytes, current: tuple[int, int]) -> Table | None:
    """The leases `data` records, or None when it is torn, corrupt, or written for another state of
    the directory than `current`."""
    try:
        lines = data.decode().split("\n")
    except UnicodeDecodeError:
        return None
    count, odd = divmod(len(lines) - 3, 2)     # the header, 2 lines a lease, the end line, "" after it
    if odd or lines[-2:] != [_END, ""] or lines[0] != _header(current, count):
        return None
    return dict(zip(lines[1:1 + count], lines[1 + count:1 + 2 * count]))


def render(table: Table, current: tuple[int, int]) -> bytes:
    return "\n".join((_header(current, len(table)), *table, *table.values(), _END, "")).encode()


def write(fd: int, data: bytes):
    """Replace the file's content in place. Its first byte, part of the header, is spoilt first and
    written last: a writer killed part-way (or a full disk) leaves no index, whatever it had written
    of the rest. (Not fsync'd: after a power cut, the header's page may be on disk without the
    others. store.py's checks cover an index that is current but wrong.)"""
    os.pwrite(fd, b"#", 0)
    if os.pwrite(fd, data[1:], 1) == len(data) - 1:
        os.ftruncate(fd, len(data))
        os.pwrite(fd, data[:1], 0)


def holder_words(container_id: str, ifname: str | None) -> str:
    """A holder as the index writes it: "containerID ifname", or the container ID alone. Spaces, line
    feeds and backslashes (never in a CNI container ID or ifname, maybe in a lease file made by hand)
    are escaped."""
    words = _escape(container_id)
    return words if ifname is None else f"{words} {_escape(ifname)}"


def holder(words: str) -> tuple[str, str | None]:
    """(container ID, ifname or None) from `holder_words`."""
    container_id, separator, ifname = words.partition(" ")
    return _unescape(container_id), _unescape(ifname) if separator else None


def _escape(text: str) -> str:
    if " " not in text and "\n" not in text and "\\" not in text:
        return text
    return text.replace("\\", "\\\\").replace(" ", "\\s").replace("\n", "\\n")


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return "\\".join(part.replace("\\s", " ").replace("\\n", "\n") for part in text.split("\\\\"))


def _header(current: tuple[int, int], count: int) -> str:
    return f"{_MAGIC} {current[0]} {current[1]} {count}"
