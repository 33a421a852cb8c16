"""An embedded replica of `libsql-wal serve` through PyPI `libsql` (unchanged), as
tests/serve_embedded_replica.rs drives it, and as replica.mjs does for npm.

    python3 replica.py SERVER_URL REPLICA_FILE STEPS_JSON

STEPS_JSON: [{"primary": SQL} | {"sync": SQL}, ...]. `primary` runs SQL on the server (a
remote connection); `sync` opens the local replica with `sync_url`, calls sync(), runs SQL on
it. Prints one JSON document: {"steps": [{"rows": [[...], ...]}, ...]}.
"""

import json
import sys

import libsql

url, path, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = []
for step in steps:
    if "primary" in step:
        conn = libsql.connect(url)
        rows = conn.execute(step["primary"]).fetchall()
        conn.commit()
        conn.close()
    else:
        conn = libsql.connect(path, sync_url=url)
        conn.sync()
        rows = conn.execute(step["sync"]).fetchall()
        conn.close()
    out.append({"rows": [list(r) for r in (rows or [])]})
print(json.dumps({"steps": out}))
