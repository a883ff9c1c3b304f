"""A small etcd v3 client over etcd's JSON gateway (etcd 3.4 and later: POST /v3/...), standard
library only. Keys and values travel base64-encoded; 64-bit numbers travel as strings.

Only what the overlay registry needs: range over a prefix, leases (grant, keep alive, revoke),
compare-and-put transactions, and a watch stream.
"""

import base64
import dataclasses
import http.client
import json
import socket
import threading
import urllib.parse


class EtcdError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclasses.dataclass(frozen=True)
class Event:
    deleted: bool
    key: str
    value: bytes


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (the prefix, last byte + 1)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def _key_value(kv: dict) -> KeyValue:
    return KeyValue(key=base64.b64decode(kv["key"]).decode(), value=base64.b64decode(kv.get("value", "")),
                    mod_revision=int(kv.get("mod_revision", 0)))


class Client:
    def __init__(self, endpoints, timeout: float = 5.0):
        self.endpoints = [urllib.parse.urlsplit(e) for e in endpoints]
        bad = [e.geturl() for e in self.endpoints if e.scheme not in ("http", "https") or not e.hostname]
        if not self.endpoints or bad:
            raise EtcdError(f"invalid etcd endpoints {bad or endpoints}: expected http(s)://HOST:PORT")
        self.timeout = timeout
        self._current = 0

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        """A connection to the first endpoint that answers, starting from the last one that did."""
        errors = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            url = self.endpoints[index]
            kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            conn = kind(url.hostname, url.port or 2379, timeout=timeout)
            try:
                conn.connect()
            except OSError as e:
                errors.append(f"{url.geturl()}: {e}")
                continue
            self._current = index
            return conn
        raise EtcdError("no etcd endpoint answers: " + "; ".join(errors))

    def _send(self, path: str, body: dict, timeout: float | None) -> tuple:
        conn = self._connect(timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
        except OSError as e:
            conn.close()
            raise EtcdError(f"etcd {path}: {e}") from None
        if response.status != 200:
            detail = response.read(2000).decode(errors="replace")
            conn.close()
            raise EtcdError(f"etcd {path}: HTTP {response.status}: {detail}")
        return conn, response

    def _call(self, path: str, body: dict) -> dict:
        conn, response = self._send(path, body, self.timeout)
        try:
            return json.loads(response.read())
        except (OSError, ValueError) as e:
            raise EtcdError(f"etcd {path}: {e}") from None
        finally:
            conn.close()

    def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """(revision, every key-value under `prefix`)."""
        reply = self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return int(reply["header"]["revision"]), [_key_value(kv) for kv in reply.get("kvs", [])]

    def grant(self, ttl: int) -> int:
        reply = self._call("/v3/lease/grant", {"TTL": ttl})
        if reply.get("error"):
            raise EtcdError(f"lease grant: {reply['error']}")
        return int(reply["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew the lease; its remaining TTL, 0 when it has expired."""
        reply = self._call("/v3/lease/keepalive", {"ID": lease})
        return int(reply.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int):
        self._call("/v3/lease/revoke", {"ID": lease})

    def put_if_absent(self, key: str, value: bytes, lease: int) -> KeyValue | None:
        """Create `key` bound to `lease` unless it exists: None when created, else what holds it."""
        reply = self._txn({"key": _b64(key), "target": "CREATE", "create_revision": "0"}, key, value, lease)
        if reply.get("succeeded"):
            return None
        return _key_value(reply["responses"][0]["response_range"]["kvs"][0])

    def put_if_value(self, key: str, expected: bytes, value: bytes, lease: int) -> bool:
        """Replace `key` (now bound to `lease`) only if it still holds `expected`."""
        reply = self._txn({"key": _b64(key), "target": "VALUE", "value": _b64(expected)}, key, value, lease)
        return bool(reply.get("succeeded"))

    def _txn(self, compare: dict, key: str, value: bytes, lease: int) -> dict:
        return self._call("/v3/kv/txn", {
            "compare": [compare],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}],
            "failure": [{"request_range": {"key": _b64(key)}}]})

    def watch(self, prefix: str, start_revision: int) -> "Watch":
        body = {"create_request": {"key": _b64(prefix), "range_end": _prefix_end(prefix),
                                   "start_revision": str(start_revision)}}
        conn, response = self._send("/v3/watch", body, timeout=None)
        return Watch(conn, response)


class Watch:
    """A watch stream: iterate for batches of events; `close()` from any thread ends the iteration
    (it shuts the socket down; the iterating thread releases the connection)."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self._conn = conn
        self._response = response
        self._closed = threading.Event()

    def __iter__(self):
        try:
            yield from self._batches()
        finally:
            self._conn.close()

    def _batches(self):
        while True:
            try:
                line = self._response.readline()
            except (OSError, ValueError, http.client.HTTPException):
                line = b""
            if self._closed.is_set():
                return
            if not line:
                raise EtcdError("watch stream ended")
            if not line.strip():
                continue
            result = json.loads(line).get("result", {})
            if result.get("canceled") or result.get("compact_revision"):
                raise EtcdError(f"watch canceled: {result.get('cancel_reason') or 'revision compacted'}")
            events = []
            for e in result.get("events", []):
                kv = _key_value(e["kv"])
                events.append(Event(deleted=e.get("type") == "DELETE", key=kv.key, value=kv.value))
            if events:
                yield events

    def close(self):
        self._closed.set()
        try:
            self._conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
