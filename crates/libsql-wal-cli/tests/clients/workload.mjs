// One workload through libSQL's official JavaScript client (@libsql/client, unchanged), on the
// URL given: `http://…` is `libsql-wal serve` (Hrana over HTTP), `file:…` the same client
// in process on SQLite's own WAL. Prints one JSON transcript; tests/serve_clients.rs runs
// it both ways and wants the two equal.
//
// Every step records what both sides must agree on. What a client may legitimately report
// differently (the error's code and full text, rowsAffected and lastInsertRowid of a
// statement that is not an INSERT/UPDATE/DELETE) goes under the step's "tolerated" key, which
// the test shows but does not compare.
//
//   node workload.mjs http://127.0.0.1:8080
//   node workload.mjs file:/tmp/ref.db
import { createHash } from "node:crypto";
import { createClient } from "@libsql/client";

const url = process.argv[2];
if (!url) {
  console.error("usage: node workload.mjs URL");
  process.exit(2);
}
const client = createClient({ url, intMode: "bigint" });
const steps = [];

// A value as JSON, its type kept: integers exact, floats by their bits, blobs in hex.
function typed(v) {
  if (v === null) return null;
  if (typeof v === "bigint") return { int: v.toString() };
  if (typeof v === "number") {
    const view = new DataView(new ArrayBuffer(8));
    view.setFloat64(0, v);
    return { float: view.getBigUint64(0).toString(16).padStart(16, "0"), repr: Object.is(v, -0) ? "-0" : String(v) };
  }
  if (typeof v === "string") return { text: v };
  if (v instanceof ArrayBuffer) return { blob: Buffer.from(v).toString("hex") };
  if (ArrayBuffer.isView(v)) return { blob: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex") };
  throw new Error(`unexpected value of type ${typeof v}: ${v}`);
}

const rowsOf = (rs) => rs.rows.map((row) => Array.from({ length: rs.columns.length }, (_, i) => typed(row[i])));

// `write`: an INSERT/UPDATE/DELETE, whose rowsAffected (and, for an INSERT, lastInsertRowid)
// both sides must agree on; any other statement's are only shown.
function result(rs, kind) {
  const out = { columns: rs.columns, columnTypes: rs.columnTypes, rows: rowsOf(rs) };
  const counts = { rowsAffected: rs.rowsAffected, lastInsertRowid: rs.lastInsertRowid?.toString() ?? null };
  if (kind === "insert") {
    Object.assign(out, counts);
  } else if (kind === "write") {
    out.rowsAffected = counts.rowsAffected;
    out.tolerated = { lastInsertRowid: counts.lastInsertRowid };
  } else {
    out.tolerated = counts;
  }
  return out;
}

// The SQLite message inside an error, without the prefixes and suffix a client or server
// adds ("SQLITE_CONSTRAINT_UNIQUE: "; libSQL's server's "SQLite error: ", "SQL input
// error: … (at offset N)", "SQL string could not be parsed: ").
function sqliteMessage(message) {
  let m = message;
  for (;;) {
    const stripped = m
      .replace(/^SQLITE_[A-Z_]+: /, "")
      .replace(/^SQL_[A-Z_]+: /, "")
      .replace(/^SQLite error: /, "")
      .replace(/^SQL string could not be parsed: /, "")
      .replace(/^SQL input error: (.*) \(at offset \d+\)$/s, "$1");
    if (stripped === m) return m;
    m = stripped;
  }
}

// libSQL's server names an SQLITE_ERROR by how the statement failed: SQL_PARSE_ERROR (its
// parser refused the text), SQL_INPUT_ERROR (SQLite placed the error in the text: no such
// column…), else SQLITE_UNKNOWN (no such table…). In process the client gives SQLite's own
// SQLITE_ERROR. Compared here: that SQLite's code is SQLITE_ERROR on both sides, and only
// those three names count as it (any other code is compared as it is). Which of the three
// each error gets is asserted against libSQL's server's rules in libsql-wal-server's
// tests/parity.rs, not here, where the in-process side has no such names.
const SQLD_NAMES_OF_SQLITE_ERROR = ["SQL_PARSE_ERROR", "SQL_INPUT_ERROR", "SQLITE_UNKNOWN"];

function failure(e) {
  if (!(e instanceof Error) || e.name === "RangeError" || e.name === "TypeError") throw e;
  return {
    error: {
      // Over HTTP the client sends a transaction's statement as a batch, so it fails as the
      // subclass LibsqlBatchError (in process: LibsqlError).
      class: e.constructor.name === "LibsqlBatchError" ? "LibsqlError" : e.constructor.name,
      // The primary result code (see SQLD_NAMES_OF_SQLITE_ERROR).
      code: SQLD_NAMES_OF_SQLITE_ERROR.includes(e.code) ? "SQLITE_ERROR" : (e.code ?? null),
      sqlite: sqliteMessage(e.message),
    },
    tolerated: { name: e.name, code: e.code ?? null, extendedCode: e.extendedCode ?? null, rawCode: e.rawCode ?? null, message: e.message },
  };
}

async function outcome(f) {
  try {
    return await f();
  } catch (e) {
    return failure(e);
  }
}

async function step(name, f) {
  steps.push({ step: name, ...(await outcome(f)) });
}

// A step where the two sides are known to differ (the reason is given): shown, not compared.
async function differs(name, why, f) {
  steps.push({ step: name, tolerated: { why, ...(await outcome(f)) } });
}

const exec = (stmt, kind) => client.execute(stmt).then((rs) => result(rs, kind));
const query = (sql, args) => exec(args ? { sql, args } : sql, "read");

if (url.startsWith("file:")) {
  // The reference: SQLite's own WAL.
  const rs = await client.execute("PRAGMA journal_mode=WAL");
  if (rs.rows[0][0] !== "wal") throw new Error(`journal_mode is ${rs.rows[0][0]}, not wal`);
}

// DDL.
await step("create kv", () => exec("CREATE TABLE kv (id INTEGER PRIMARY KEY, k TEXT UNIQUE NOT NULL, v)", "ddl"));
await step("create vals", () => exec("CREATE TABLE vals (id INTEGER PRIMARY KEY, v, note TEXT)", "ddl"));
await step("schema", () => query("SELECT type, name, sql FROM sqlite_schema ORDER BY name"));

// Positional and named parameters.
await step("insert ?", () => exec({ sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["a", 1n] }, "insert"));
await step("insert ?NNN", () => exec({ sql: "INSERT INTO kv (v, k) VALUES (?2, ?1)", args: ["b", 2n] }, "insert"));
await step("insert :name", () => exec({ sql: "INSERT INTO kv (k, v) VALUES (:k, :v)", args: { k: "c", v: 3n } }, "insert"));
await step("insert $name", () => exec({ sql: "INSERT INTO kv (k, v) VALUES ($k, $v)", args: { k: "d", v: 4n } }, "insert"));
await step("insert @name", () => exec({ sql: "INSERT INTO kv (k, v) VALUES (@k, @v)", args: { k: "e", v: 5n } }, "insert"));
await step("select by name", () => query("SELECT id, k, v FROM kv WHERE k = :k OR v = $v ORDER BY id", { k: "a", v: 5n }));
await step("update", () => exec({ sql: "UPDATE kv SET v = v * 10 WHERE v >= ?", args: [3n] }, "write"));
await step("kv after parameters", () => query("SELECT * FROM kv ORDER BY id"));

// Values: blobs, 64-bit integers, floats, text, NULL, as arguments and stored, then read back.
const allBytes = new Uint8Array(256).map((_, i) => i);
const values = [
  ["blob of all 256 bytes", allBytes.buffer],
  ["empty blob", new ArrayBuffer(0)],
  ["i64 max", 9223372036854775807n],
  ["i64 min", -9223372036854775808n],
  ["2^53 + 1", 9007199254740993n],
  ["zero", 0n],
  ["0.1", 0.1],
  ["1e308", 1e308],
  ["5e-324", 5e-324],
  ["float with an integer value", 2.0],
  ["unicode text", "héllo, wörld, 世界, 🦀, \u{10FFFF}"],
  ["empty text", ""],
  ["null", null],
];
for (const [note, v] of values) {
  await step(`store ${note}`, () => exec({ sql: "INSERT INTO vals (v, note) VALUES (?, ?)", args: [v, note] }, "insert"));
}
// -0.0 goes in through SQL: as an argument @libsql/hrana-client writes a float with `"" + value`,
// which drops the sign of -0 before it leaves the client.
await step("store -0.0", () => exec("INSERT INTO vals (v, note) VALUES (-0.0, '-0.0')", "insert"));
await step("values read back", () => query("SELECT id, v, typeof(v), length(v), quote(v), note FROM vals ORDER BY id"));
await step("values as arguments echoed", () =>
  query("SELECT ?, ?, ?, ?, ?, ?, ?", [allBytes.buffer, 9223372036854775807n, -9223372036854775808n, 9007199254740993n, 0.1, 1e308, null]),
);
await step("values from SQL literals", () =>
  query("SELECT 9223372036854775807, -9223372036854775808, 9007199254740993, 0.1, 1e308, -0.0, x'', x'00ff', 'ünï', NULL"),
);
await differs(
  "infinity",
  "JSON has no infinity: the server sends the largest finite double of its sign (in process: Infinity)",
  () => query("SELECT 1e999, -1e999"),
);
await step("text with NUL stored", () => exec({ sql: "INSERT INTO vals (v, note) VALUES (?, ?)", args: ["before\u0000after", "NUL inside"] }, "insert"));
await step("text with NUL, what SQLite holds", () => query("SELECT length(CAST(v AS BLOB)), hex(v) FROM vals WHERE note = 'NUL inside'"));
await differs(
  "text with NUL read back",
  "the in-process client cuts text at its first NUL on reading; the server returns all of it",
  () => query("SELECT v FROM vals WHERE note = 'NUL inside'"),
);

// An atomic batch in which one statement fails: none of it stays.
await step("batch with a failing statement", () =>
  client
    .batch(
      [
        { sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["f", 6n] },
        { sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["a", 7n] },
        { sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["g", 8n] },
      ],
      "write",
    )
    .then((rss) => ({ results: rss.map((rs) => result(rs, "insert")) })),
);
await step("kv after the failed batch", () => query("SELECT * FROM kv ORDER BY id"));
await step("batch that succeeds", () =>
  client
    .batch(
      [
        { sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["h", 9n] },
        { sql: "UPDATE kv SET v = v + 1 WHERE k = ?", args: ["h"] },
        "SELECT k, v FROM kv WHERE k = 'h'",
      ],
      "write",
    )
    .then((rss) => ({ results: [result(rss[0], "insert"), result(rss[1], "write"), result(rss[2], "read")] })),
);
await step("read batch", () =>
  client.batch(["SELECT count(*) FROM kv", "SELECT max(id) FROM kv"], "read").then((rss) => ({ results: rss.map((rs) => result(rs, "read")) })),
);

// Interactive transactions: one commits, one rolls back, one has a failing statement and commits.
await step("transaction that commits", async () => {
  const tx = await client.transaction("write");
  try {
    const inserted = result(await tx.execute({ sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["i", 10n] }), "insert");
    const seen = result(await tx.execute("SELECT k, v FROM kv WHERE k = 'i'"), "read");
    await tx.commit();
    return { results: [inserted, seen] };
  } finally {
    tx.close();
  }
});
await step("transaction that rolls back", async () => {
  const tx = await client.transaction("write");
  try {
    const inserted = result(await tx.execute({ sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["j", 11n] }), "insert");
    const deleted = result(await tx.execute("DELETE FROM kv WHERE k = 'a'"), "write");
    const seen = result(await tx.execute("SELECT count(*) FROM kv"), "read");
    await tx.rollback();
    return { results: [inserted, deleted, seen] };
  } finally {
    tx.close();
  }
});
await step("transaction with a failing statement that commits", async () => {
  const tx = await client.transaction("write");
  try {
    const inserted = result(await tx.execute({ sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["k", 12n] }), "insert");
    let failed;
    try {
      failed = result(await tx.execute({ sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["a", 13n] }), "insert");
    } catch (e) {
      failed = failure(e);
    }
    await tx.commit();
    return { results: [inserted, failed] };
  } finally {
    tx.close();
  }
});
await step("kv after the transactions", () => query("SELECT * FROM kv ORDER BY id"));

// Several statements in one call (`sequence` over HTTP).
await step("executeMultiple", () =>
  client.executeMultiple("CREATE TABLE m (a); INSERT INTO m VALUES (1); INSERT INTO m VALUES (2);").then(() => ({ ok: true })),
);
await step("m", () => query("SELECT a FROM m ORDER BY a"));

// 100,000 rows: a table filled by INSERT … SELECT, read back whole; and a CTE's rows.
function digest(rs) {
  const rows = rowsOf(rs);
  const sha256 = createHash("sha256").update(JSON.stringify(rows)).digest("hex");
  return { columns: rs.columns, count: rows.length, sha256, first: rows[0], last: rows[rows.length - 1] };
}
await step("create big", () => exec("CREATE TABLE big (x INTEGER PRIMARY KEY, sq INTEGER, f REAL, t TEXT, b BLOB)", "ddl"));
await step("insert 100k rows", () =>
  exec(
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) " +
      "INSERT INTO big SELECT x, x * x * x * 9000, x / 7.0, 'row ' || x, CAST(printf('%08x', x) AS BLOB) FROM c",
    "write",
  ),
);
await step("read 100k rows", () => client.execute("SELECT * FROM big ORDER BY x").then(digest));
await step("100k rows of a CTE", () =>
  client
    .execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT x, -x * 92233720368547, x * 0.5, hex(x) FROM c")
    .then(digest),
);
await step("aggregate of big", () => query("SELECT count(*), sum(x), total(f), sum(length(t)), sum(length(b)) FROM big"));

// SQL errors.
await step("syntax error", () => query("SELEC 1"));
await step("no such table", () => query("SELECT * FROM nosuch"));
await step("no such column", () => query("SELECT nosuch FROM kv"));
await step("UNIQUE violation", () => exec({ sql: "INSERT INTO kv (k, v) VALUES (?, ?)", args: ["a", 0n] }, "insert"));
await step("NOT NULL violation", () => exec("INSERT INTO kv (k) VALUES (NULL)", "insert"));
await step("PRIMARY KEY datatype mismatch", () => exec("INSERT INTO kv (id, k) VALUES ('x', 'y')", "insert"));
await differs(
  "too few arguments",
  "SQLite binds NULL to a parameter given no value; libSQL's server (and so ours) refuses with ARGS_INVALID",
  () => query("SELECT ?, ?", [1n]),
);
await step("still usable after errors", () => query("SELECT count(*) FROM kv"));

await step("final kv", () => query("SELECT * FROM kv ORDER BY id"));
client.close();
process.stdout.write(JSON.stringify({ client: "@libsql/client", steps }, null, 1) + "\n");
