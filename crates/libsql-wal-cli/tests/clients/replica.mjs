// An embedded replica of `libsql-wal serve` through @libsql/client (tests/serve_replica.rs).
// Usage: node replica.mjs SERVER_URL REPLICA_FILE STEPS_JSON
// STEPS_JSON: [{"primary": SQL} | {"sync": SQL}, ...]. `primary` runs SQL on the server over
// Hrana; `sync` calls sync() on the local replica and then runs SQL on it. Prints one JSON
// document: {"steps": [{"rows": [[...], ...]}, ...]}.
import { createClient } from "@libsql/client";

const [url, file, stepsJson] = process.argv.slice(2);
const primary = createClient({ url });
const out = [];
for (const step of JSON.parse(stepsJson)) {
  if (step.primary !== undefined) {
    const rs = await primary.execute(step.primary);
    out.push({ rows: rs.rows.map((r) => Array.from(r)) });
  } else {
    // A new client per step: one opened before a sync that brings a schema change did
    // not see that change in our runs (the file, reopened, has it).
    const replica = createClient({ url: `file:${file}`, syncUrl: url });
    await replica.sync();
    const rs = await replica.execute(step.sync);
    out.push({ rows: rs.rows.map((r) => Array.from(r)) });
    replica.close();
  }
}
primary.close();
console.log(JSON.stringify({ steps: out }, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
