// Drives the real @libsql/client against skald; pytest (tests/integration/libsql) runs it.
// Usage: node client.mjs SCENARIO URL TOKEN [ARG]; prints one JSON object per line.
import { createClient } from "@libsql/client";
import * as readline from "node:readline";

const [scenario, url, authToken, arg] = process.argv.slice(2);
const client = createClient({ url, authToken, intMode: "bigint" });
const out = (obj) => process.stdout.write(JSON.stringify(obj, (k, v) => (typeof v === "bigint" ? `${v}n` : v)) + "\n");
const failure = (e) => ({ code: e.code ?? null, message: String(e.message ?? e) });

async function attempt(fn) {
  try {
    return { ok: await fn() };
  } catch (e) {
    return { error: failure(e) };
  }
}

const hex = (buf) => Buffer.from(buf).toString("hex");

const scenarios = {
  async basics() {
    await client.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, big INTEGER, data BLOB, note TEXT, ratio REAL)");
    const big = 2n ** 62n + 7n; // beyond 2^53: a JavaScript number would round it
    const ins = await client.execute({
      sql: "INSERT INTO items (big, data, note, ratio) VALUES (?, ?, :note, 0.25)".replace(":note", "?"),
      args: [big, new Uint8Array([0, 1, 254, 255]), "héllo"],
    });
    out({ step: "insert", rowsAffected: ins.rowsAffected, lastInsertRowid: ins.lastInsertRowid });
    const named = await client.execute({ sql: "SELECT :a + $b AS s, @c AS c", args: { a: 2, b: 3, c: "x" } });
    out({ step: "named", row: named.rows[0] });
    const row = (await client.execute("SELECT big, data, note, ratio FROM items WHERE id = 1")).rows[0];
    out({ step: "select", big: row.big, data: hex(row.data), note: row.note, ratio: row.ratio, exact: row.big === big });
    const batch = await client.batch(
      ["INSERT INTO items (note) VALUES ('b1')", { sql: "INSERT INTO items (note) VALUES (?)", args: ["b2"] }],
      "write",
    );
    out({ step: "batch_write", affected: batch.map((r) => r.rowsAffected) });
    const failed = await attempt(() =>
      client.batch(["INSERT INTO items (note) VALUES ('b3')", "INSERT INTO items (id) VALUES (1)"], "write"),
    );
    const count = (await client.execute("SELECT count(*) AS n FROM items WHERE note = 'b3'")).rows[0].n;
    out({ step: "batch_atomic", error: failed.error, b3_rows: count });
    const read = await client.batch(["SELECT count(*) AS n FROM items", "SELECT max(id) AS m FROM items"], "read");
    out({ step: "batch_read", n: read[0].rows[0].n, m: read[1].rows[0].m });
    const readWrite = await attempt(() => client.batch(["INSERT INTO items (note) VALUES ('ro')"], "read"));
    out({ step: "batch_read_refuses_write", error: readWrite.error });
    const tx = await client.transaction("write");
    await tx.execute("INSERT INTO items (note) VALUES ('rolled back')");
    const inside = (await tx.execute("SELECT count(*) AS n FROM items WHERE note = 'rolled back'")).rows[0].n;
    await tx.rollback();
    const after = (await client.execute("SELECT count(*) AS n FROM items WHERE note = 'rolled back'")).rows[0].n;
    out({ step: "rollback", inside, after });
    const tx2 = await client.transaction("write");
    await tx2.execute("INSERT INTO items (note) VALUES ('committed')");
    await tx2.commit();
    const committed = (await client.execute("SELECT count(*) AS n FROM items WHERE note = 'committed'")).rows[0].n;
    out({ step: "commit", committed });
    out({ step: "constraint", ...(await attempt(() => client.execute("INSERT INTO items (id) VALUES (1)"))) });
    out({ step: "syntax", ...(await attempt(() => client.execute("SELEC 1"))) });
    out({ step: "forbidden", ...(await attempt(() => client.execute("ATTACH DATABASE 'x.db' AS x"))) });
    const many = await client.executeMultiple("CREATE TABLE IF NOT EXISTS seq (a); INSERT INTO seq VALUES (1); INSERT INTO seq VALUES (2);");
    const seq = (await client.execute("SELECT count(*) AS n FROM seq")).rows[0].n;
    out({ step: "sequence", many: many ?? null, seq });
  },

  async readonly() {
    out({ step: "read", ...(await attempt(async () => (await client.execute("SELECT count(*) AS n FROM items")).rows[0].n)) });
    out({ step: "write", ...(await attempt(() => client.execute("INSERT INTO items (note) VALUES ('nope')"))) });
    out({ step: "batch", ...(await attempt(() => client.batch(["INSERT INTO items (note) VALUES ('nope')"], "write"))) });
    const tx = await client.transaction("write"); // BEGIN goes out with the first statement
    out({ step: "transaction", ...(await attempt(() => tx.execute("SELECT 1"))) });
    tx.close();
  },

  async hold() {
    // Begin, write, then wait for the test to say "commit" (after the server took the writer back).
    const tx = await client.transaction("write");
    await tx.execute("INSERT INTO items (note) VALUES ('held')");
    out({ step: "began" });
    const lines = readline.createInterface({ input: process.stdin });
    for await (const _line of lines) break;
    lines.close();
    process.stdin.destroy();
    out({ step: "commit", ...(await attempt(() => tx.commit())) });
    tx.close();
  },

  async batches() {
    // Batches of 5 rows (numbered from OFFSET, past what is stored) until killed; each acknowledged
    // batch is printed.
    const offset = Number(process.argv[6] ?? 0);
    const start = (await client.execute({
      sql: "SELECT coalesce(max(batch) + 1, ?) AS s FROM acked WHERE batch >= ? AND batch < ?",
      args: [offset, offset, offset + 1000000],
    })).rows[0].s;
    out({ step: "ready" });
    for (let i = Number(start); i < Number(start) + Number(arg ?? 1e9); i++) {
      const stmts = [0, 1, 2, 3, 4].map((n) => ({ sql: "INSERT INTO acked VALUES (?, ?)", args: [i, n] }));
      await client.batch(stmts, "write");
      out({ acked: i });
    }
  },
};

try {
  await scenarios[scenario]();
} catch (e) {
  out({ fatal: failure(e), stack: String(e.stack) });
  process.exitCode = 1;
} finally {
  client.close();
}
