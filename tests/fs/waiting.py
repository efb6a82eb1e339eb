"""wait_until: the one polling helper of the Python suites (tests/fs, tests/cluster)."""
import time


def wait_until(cond, deadline, what, interval=0.05):
    """Poll cond() until it returns a true value or `deadline` seconds pass; return it."""
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(interval)


def open_when_free(path, flags, what, deadline=5):
    """os.open(path, flags), retried while it fails with EBUSY: FUSE sends a close's
    RELEASE after close() has returned, so a writers = single slot frees a moment later."""
    import errno
    import os

    def attempt():
        try:
            return os.open(path, flags)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            return None
    return wait_until(attempt, deadline, what)
