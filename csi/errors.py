"""CSI errors and the decorator every RPC handler wears.

Services raise CsiError subclasses; the state layer and the kernel helpers
raise their own exceptions, mapped here to gRPC status codes in one place.
"""

import functools
import logging
import threading

import grpc

from csi import mounts, state, targets

log = logging.getLogger(__name__)


class CsiError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(CsiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CsiError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CsiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CsiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(CsiError):
    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(CsiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(CsiError):
    code = grpc.StatusCode.ABORTED


class Unavailable(CsiError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(CsiError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Busy:
    """Keys (volume IDs, request names) with an operation in flight.

    A second operation on a busy key is refused at once (ABORTED), as the spec
    asks, instead of queueing behind the first.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._keys = set()

    def hold(self, *keys):
        keys = {k for k in keys if k}
        with self._lock:
            taken = keys & self._keys
            if taken:
                raise Aborted(f"an operation on {', '.join(sorted(taken))} is already in progress")
            self._keys |= keys
        return _Release(self, keys)

    def _release(self, keys):
        with self._lock:
            self._keys -= keys


class _Release:
    def __init__(self, busy, keys):
        self._busy, self._keys = busy, keys

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._busy._release(self._keys)


def _missing(request, field):
    """A REQUIRED field is missing: empty scalar, empty repeated, or unset message."""
    descriptor = request.DESCRIPTOR.fields_by_name[field]
    if descriptor.is_repeated:
        return len(getattr(request, field)) == 0
    if descriptor.message_type is not None:
        return not request.HasField(field)
    return not getattr(request, field)


def rpc(*required):
    """Wrap a servicer method: check REQUIRED fields, map exceptions to codes."""

    def decorate(method):
        @functools.wraps(method)
        def handler(self, request, context):
            try:
                missing = [f for f in required if _missing(request, f)]
                if missing:
                    raise InvalidArgument(f"missing required field(s): {', '.join(missing)}")
                return method(self, request, context)
            except CsiError as e:
                context.abort(e.code, str(e))
            except state.StateError as e:
                context.abort(_STATE_CODES.get(type(e), grpc.StatusCode.INTERNAL), str(e))
            except mounts.TargetInUse as e:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
            except targets.UnsafeTarget as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except (mounts.CommandError, OSError) as e:
                log.error("%s: %s", method.__name__, e)
                context.abort(grpc.StatusCode.INTERNAL, str(e))
            except Exception as e:  # a bug: keep the driver serving, say what broke
                log.exception("%s failed", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")

        return handler

    return decorate


_STATE_CODES = {
    state.NameTaken: grpc.StatusCode.ALREADY_EXISTS,
    state.Unknown: grpc.StatusCode.NOT_FOUND,
}
