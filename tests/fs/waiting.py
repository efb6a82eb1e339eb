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
