"""Undo what a failed ADD made, newest first."""

from cni import log


class Rollback:
    def __init__(self):
        self._steps = []

    def push(self, description: str, undo):
        self._steps.append((description, undo))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        for description, undo in reversed(self._steps):
            try:
                undo()
            except Exception as e:  # keep undoing: the original error is what the caller reports
                log.logger().error("rollback of %s failed: %s", description, e)
        return False
