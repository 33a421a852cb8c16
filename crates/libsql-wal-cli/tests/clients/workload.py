"""One workload through libSQL's official Python package (PyPI `libsql`, unchanged), on the
database given: `http://…` is `libsql-wal serve` (Hrana over HTTP: /v3/pipeline, /v3/cursor),
a path the same package in process on SQLite's own WAL. Prints one JSON transcript;
tests/serve_clients.rs runs it both ways and wants the two equal.

Every step records what both sides must agree on. What a client may legitimately report
differently (the error's full text, rowcount and lastrowid of a statement that is not an
INSERT/UPDATE/DELETE) goes under the step's "tolerated" key, shown but not compared.

The package (0.1.11) binds only a list or tuple: named parameters (:name, $name, @name) are
bound by their position, which is how SQLite numbers them. And it sends a Python int as a
64-bit integer only if it fits 32 bits (a larger one goes as a float, on both sides alike), so
64-bit integers are also written as SQL literals here.

    python3 workload.py http://127.0.0.1:8080
    python3 workload.py /tmp/ref.db
"""

import hashlib
import json
import re
import struct
import sys

import libsql

URL = sys.argv[1] if len(sys.argv) > 1 else sys.exit("usage: python3 workload.py URL-or-PATH")
REMOTE = URL.startswith(("http://", "https://", "libsql://"))
steps = []


def typed(v):
    """A value as JSON, its type kept: integers exact, floats by their bits, blobs in hex."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError(f"unexpected bool {v!r}")
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"float": struct.pack(">d", v).hex(), "repr": repr(v)}
    if isinstance(v, str):
        return {"text": v}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"blob": bytes(v).hex()}
    raise TypeError(f"unexpected value of type {type(v)}: {v!r}")


def rows_of(rows):
    return [[typed(v) for v in row] for row in rows]


def sqlite_message(message):
    """The SQLite message inside an error: over HTTP the package wraps the server's error
    (`Hrana: `stream error: `Error { message: "SQLite error: …", code: "…" }``)."""
    m = re.search(r'Error \{ message: "((?:[^"\\]|\\.)*)", code: "([^"]*)" \}', message)
    if m:
        message = json.loads('"' + m.group(1) + '"')
    # libSQL's server's forms: "SQLite error: …", "SQL input error: … (at offset N)",
    # "SQL string could not be parsed: …".
    message = re.sub(r"^SQLite error: ", "", message)
    message = re.sub(r"^SQL string could not be parsed: ", "", message)
    return re.sub(r"^SQL input error: (.*) \(at offset \d+\)$", r"\1", message, flags=re.S)


def failure(e):
    if not isinstance(e, (ValueError, libsql.Error)):
        raise e
    return {
        "error": {"class": type(e).__name__, "sqlite": sqlite_message(str(e))},
        "tolerated": {"message": str(e)},
    }


def outcome(f):
    try:
        return f()
    except (ValueError, libsql.Error) as e:
        return failure(e)


def step(name, f):
    steps.append({"step": name, **outcome(f)})


def differs(name, why, f):
    """A step where the two sides are known to differ (the reason is given): shown, not compared."""
    steps.append({"step": name, "tolerated": {"why": why, **outcome(f)}})


def result(cur, kind):
    """`insert`/`write`: an INSERT or UPDATE/DELETE, whose counts both sides must agree on."""
    rows = cur.fetchall() if cur.description else []
    out = {"columns": [d[0] for d in cur.description or ()], "rows": rows_of(rows or [])}
    counts = {"rowcount": cur.rowcount, "lastrowid": cur.lastrowid}
    if kind == "insert":
        out.update(counts)
    elif kind == "write":
        out["rowcount"] = cur.rowcount
        out["tolerated"] = {"lastrowid": cur.lastrowid}
    else:
        out["tolerated"] = counts
    return out


# The default connection: DEFERRED, as most programs use it (the package begins a transaction
# before an INSERT/UPDATE/DELETE; commit() and rollback() end it).
conn = libsql.connect(URL)
# Autocommit: transactions only by BEGIN/COMMIT/ROLLBACK.
auto = libsql.connect(URL, isolation_level=None)


def run(sql, params=(), kind="read", c=None):
    return result((c or conn).cursor().execute(sql, params), kind)


if not REMOTE:
    mode = auto.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
    if mode != "wal":
        sys.exit(f"journal_mode is {mode}, not wal")

# DDL.
step("create kv", lambda: run("CREATE TABLE kv (id INTEGER PRIMARY KEY, k TEXT UNIQUE NOT NULL, v)", kind="ddl"))
step("create vals", lambda: run("CREATE TABLE vals (id INTEGER PRIMARY KEY, v, note TEXT)", kind="ddl"))
step("schema", lambda: run("SELECT type, name, sql FROM sqlite_schema ORDER BY name"))

# Positional and named parameters.
step("insert ?", lambda: run("INSERT INTO kv (k, v) VALUES (?, ?)", ("a", 1), "insert"))
step("insert ?NNN", lambda: run("INSERT INTO kv (v, k) VALUES (?2, ?1)", ("b", 2), "insert"))
step("insert :name", lambda: run("INSERT INTO kv (k, v) VALUES (:k, :v)", ("c", 3), "insert"))
step("insert $name", lambda: run("INSERT INTO kv (k, v) VALUES ($k, $v)", ("d", 4), "insert"))
step("insert @name", lambda: run("INSERT INTO kv (k, v) VALUES (@k, @v)", ("e", 5), "insert"))
step("a named parameter used twice", lambda: run("SELECT :x, :x + 1, ?", (7, 8)))
step("commit", lambda: (conn.commit(), {"in_transaction": conn.in_transaction})[1])
step("update", lambda: run("UPDATE kv SET v = v * 10 WHERE v >= ?", (3,), "write"))
step("commit the update", lambda: (conn.commit(), {"in_transaction": conn.in_transaction})[1])
step("kv after parameters", lambda: run("SELECT * FROM kv ORDER BY id"))

# Values: blobs, 64-bit integers, floats, text, NULL, as arguments and stored, then read back.
ALL_BYTES = bytes(range(256))
values = [
    ("blob of all 256 bytes", ALL_BYTES),
    ("empty blob", b""),
    ("zero", 0),
    ("i32 max", 2147483647),
    ("0.1", 0.1),
    ("1e308", 1e308),
    ("-0.0", -0.0),
    ("5e-324", 5e-324),
    ("float with an integer value", 2.0),
    ("unicode text", "héllo, wörld, 世界, 🦀, \U0010ffff"),
    ("empty text", ""),
    ("null", None),
    # Above 32 bits the package sends a float (see the top): the same on both sides.
    ("2^53 + 1 as a Python int", 9007199254740993),
]
for note, v in values:
    step(f"store {note}", lambda v=v, note=note: run("INSERT INTO vals (v, note) VALUES (?, ?)", (v, note), "insert", auto))
for note, literal in [
    ("i64 max", "9223372036854775807"),
    ("i64 min", "-9223372036854775807 - 1"),
    ("2^53 + 1", "9007199254740993"),
]:
    step(f"store {note}", lambda literal=literal, note=note: run(f"INSERT INTO vals (v, note) VALUES ({literal}, ?)", (note,), "insert", auto))
step("values read back", lambda: run("SELECT id, v, typeof(v), length(v), quote(v), note FROM vals ORDER BY id", c=auto))
step("values as arguments echoed", lambda: run("SELECT ?, ?, ?, ?, ?, ?", (ALL_BYTES, -2147483648, 0.1, -0.0, 1e308, None), c=auto))
step(
    "values from SQL literals",
    lambda: run(
        "SELECT 9223372036854775807, -9223372036854775808, 9007199254740993, 0.1, 1e308, -0.0, x'', x'00ff', 'ünï', NULL",
        c=auto,
    ),
)
differs(
    "infinity",
    "JSON has no infinity: the server sends the largest finite double of its sign (in process: inf)",
    lambda: run("SELECT 1e999, -1e999", c=auto),
)
step("text with NUL", lambda: run("INSERT INTO vals (v, note) VALUES (?, ?)", ("before\0after", "NUL inside"), "insert", auto))
step("text with NUL, what SQLite holds", lambda: run("SELECT length(CAST(v AS BLOB)), hex(v) FROM vals WHERE note = 'NUL inside'", c=auto))
differs(
    "text with NUL read back",
    "in process the package cuts text at its first NUL on reading; the server returns all of it",
    lambda: run("SELECT v FROM vals WHERE note = 'NUL inside'", c=auto),
)


# An atomic batch in which one statement fails: none of it stays. The package has no batch
# call; by hand it is BEGIN, the statements, and ROLLBACK at the first failure.
def atomic_by_hand():
    auto.execute("BEGIN")
    done = []
    for k, v in [("f", 6), ("a", 7), ("g", 8)]:
        try:
            done.append(run("INSERT INTO kv (k, v) VALUES (?, ?)", (k, v), "insert", auto))
        except (ValueError, libsql.Error) as e:
            done.append(failure(e))
            auto.execute("ROLLBACK")
            break
    else:
        auto.execute("COMMIT")
    return {"results": done, "in_transaction": auto.in_transaction}


step("atomic batch by hand with a failing statement", atomic_by_hand)
step("kv after the failed batch", lambda: run("SELECT * FROM kv ORDER BY id", c=auto))


# The same as a script (executescript). The package runs one differently in process and over
# HTTP, so what it leaves is only shown; a rollback() after it brings both to the same state.
def script_batch():
    out = outcome(
        lambda: (
            auto.executescript(
                "BEGIN; INSERT INTO kv (k, v) VALUES ('f', 6); INSERT INTO kv (k, v) VALUES ('a', 7); "
                "INSERT INTO kv (k, v) VALUES ('g', 8); COMMIT;"
            ),
            {"ok": True},
        )[1]
    )
    out["in_transaction"] = auto.in_transaction
    out["rows seen"] = run("SELECT k FROM kv WHERE k IN ('f', 'g')", c=auto)["rows"]
    if auto.in_transaction:
        out["rollback()"] = outcome(lambda: (auto.rollback(), {"ok": True})[1])
        out["in_transaction after rollback()"] = auto.in_transaction
    return out


differs(
    "script with a failing statement",
    "in process the package's executescript stops at the failing statement without an error and "
    "leaves its transaction open; over HTTP it sends the script as a batch whose steps each need "
    "the last to succeed and closes the stream in the same request, so the server rolls it back",
    script_batch,
)
step("kv after the failed script and rollback()", lambda: run("SELECT * FROM kv ORDER BY id", c=auto))
step(
    "script batch that succeeds",
    lambda: (
        auto.executescript(
            "BEGIN; INSERT INTO kv (k, v) VALUES ('h', 9); UPDATE kv SET v = v + 1 WHERE k = 'h'; COMMIT;"
        ),
        {"in_transaction": auto.in_transaction},
    )[1],
)
step("kv after the script", lambda: run("SELECT k, v FROM kv WHERE k = 'h'", c=auto))


# Interactive transactions: implicit (DEFERRED) ones ended by commit() and rollback(), explicit
# BEGIN … COMMIT / ROLLBACK on the autocommit connection, and one with a failing statement.
def implicit_commit():
    inserted = run("INSERT INTO kv (k, v) VALUES (?, ?)", ("i", 10), "insert")
    during = {"in_transaction": conn.in_transaction}
    seen = run("SELECT k, v FROM kv WHERE k = 'i'")
    conn.commit()
    return {"results": [inserted, during, seen, {"in_transaction": conn.in_transaction}]}


def implicit_rollback():
    inserted = run("INSERT INTO kv (k, v) VALUES (?, ?)", ("j", 11), "insert")
    deleted = run("DELETE FROM kv WHERE k = 'a'", kind="write")
    seen = run("SELECT count(*) FROM kv")
    conn.rollback()
    return {"results": [inserted, deleted, seen, {"in_transaction": conn.in_transaction}]}


def explicit(end):
    def go():
        auto.execute("BEGIN IMMEDIATE")
        inserted = run("INSERT INTO kv (k, v) VALUES (?, ?)", ("x" + end, 20), "insert", auto)
        during = {"in_transaction": auto.in_transaction}
        failed = outcome(lambda: run("INSERT INTO kv (k, v) VALUES (?, ?)", ("a", 21), "insert", auto))
        still = {"in_transaction": auto.in_transaction}
        auto.execute(end)
        return {"results": [inserted, during, failed, still, {"in_transaction": auto.in_transaction}]}

    return go


step("implicit transaction, commit()", implicit_commit)
step("implicit transaction, rollback()", implicit_rollback)
step("explicit transaction with a failing statement, COMMIT", explicit("COMMIT"))
step("explicit transaction with a failing statement, ROLLBACK", explicit("ROLLBACK"))
step("kv after the transactions", lambda: run("SELECT * FROM kv ORDER BY id", c=auto))


# 100,000 rows: a table filled by INSERT … SELECT, read back whole; and a CTE's rows.
def digest(cur):
    rows = rows_of(cur.fetchall())
    sha256 = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
    return {
        "columns": [d[0] for d in cur.description],
        "count": len(rows),
        "sha256": sha256,
        "first": rows[0],
        "last": rows[-1],
    }


step("create big", lambda: run("CREATE TABLE big (x INTEGER PRIMARY KEY, sq INTEGER, f REAL, t TEXT, b BLOB)", kind="ddl", c=auto))
step(
    "insert 100k rows",
    lambda: run(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
        "INSERT INTO big SELECT x, x * x * x * 9000, x / 7.0, 'row ' || x, CAST(printf('%08x', x) AS BLOB) FROM c",
        kind="write",
        c=auto,
    ),
)
step("read 100k rows", lambda: digest(auto.execute("SELECT * FROM big ORDER BY x")))
step(
    "100k rows of a CTE",
    lambda: digest(
        auto.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
            "SELECT x, -x * 92233720368547, x * 0.5, hex(x) FROM c"
        )
    ),
)
step("aggregate of big", lambda: run("SELECT count(*), sum(x), total(f), sum(length(t)), sum(length(b)) FROM big", c=auto))

# SQL errors.
step("syntax error", lambda: run("SELEC 1", c=auto))
step("no such table", lambda: run("SELECT * FROM nosuch", c=auto))
step("no such column", lambda: run("SELECT nosuch FROM kv", c=auto))
step("UNIQUE violation", lambda: run("INSERT INTO kv (k, v) VALUES (?, ?)", ("a", 0), "insert", auto))
step("NOT NULL violation", lambda: run("INSERT INTO kv (k) VALUES (NULL)", kind="insert", c=auto))
step("PRIMARY KEY datatype mismatch", lambda: run("INSERT INTO kv (id, k) VALUES ('x', 'y')", kind="insert", c=auto))
differs(
    "too few arguments",
    "SQLite binds NULL to a parameter given no value; libSQL's server (and so ours) refuses with ARGS_INVALID",
    lambda: run("SELECT ?, ?", (1,), c=auto),
)
step("still usable after errors", lambda: run("SELECT count(*) FROM kv", c=auto))

step("final kv", lambda: run("SELECT * FROM kv ORDER BY id", c=auto))
conn.close()
auto.close()
json.dump({"client": "libsql (PyPI)", "steps": steps}, sys.stdout, indent=1, ensure_ascii=False)
sys.stdout.write("\n")
