#!/usr/bin/python3
"""Print one closing line for a `meson test` run: 'meson: N passed, N failed[, N skipped]'.

Reads build/meson-logs/testlog.json (one JSON object per test). Used by `make test` so
CI logs end with a plain count, whatever the runners inside printed."""
import json
import sys

counts = {"passed": 0, "failed": 0, "skipped": 0}
with open(sys.argv[1]) as log:
    for line in log:
        result = json.loads(line).get("result")
        if result in ("OK", "EXPECTEDFAIL"):
            counts["passed"] += 1
        elif result == "SKIP":
            counts["skipped"] += 1
        else:
            counts["failed"] += 1
tail = f", {counts['skipped']} skipped" if counts["skipped"] else ""
print(f"meson: {counts['passed']} passed, {counts['failed']} failed{tail}")
