// Load generator for bench/libsql.py: CLIENTS concurrent clients insert single rows for SECONDS.
// Usage: node libsql_load.mjs (libsql|http) URL TOKEN CLIENTS SECONDS [BODY_JSON]
//   libsql: one @libsql/client per client (ws:// URL: one WebSocket each), `INSERT INTO items`.
//   http:   fetch POSTs of BODY_JSON to URL (skald's /query, PocketBase's record create).
// Prints {"ops": N, "seconds": S, "errors": E}.
import { createClient } from "@libsql/client";

const [mode, url, token, clientsArg, secondsArg, body] = process.argv.slice(2);
const clients = Number(clientsArg);
const seconds = Number(secondsArg);
let ops = 0;
let errors = 0;

async function libsqlWorker(i, until) {
  const db = createClient({ url, authToken: token });
  await db.execute("SELECT 1"); // connect before the clock starts counting
  await ready;
  let n = 0;
  while (performance.now() < until()) {
    try {
      await db.execute({ sql: "INSERT INTO items (note) VALUES (?)", args: [`c${i}-${n++}`] });
      ops++;
    } catch (e) {
      errors++;
    }
  }
  db.close();
}

async function httpWorker(i, until) {
  const headers = { "content-type": "application/json" };
  if (token && token !== "-") headers.authorization = `Bearer ${token}`;
  await ready;
  while (performance.now() < until()) {
    const r = await fetch(url, { method: "POST", headers, body });
    await r.arrayBuffer();
    if (r.ok) ops++;
    else errors++;
  }
}

let start = 0;
let release;
const ready = new Promise((resolve) => (release = resolve));
const until = () => start + seconds * 1000;
const worker = mode === "libsql" ? libsqlWorker : httpWorker;
const running = Array.from({ length: clients }, (_, i) => worker(i, until));
setTimeout(() => {
  start = performance.now();
  release();
}, mode === "libsql" ? 1500 : 100);
await Promise.all(running);
process.stdout.write(JSON.stringify({ ops, seconds, errors }) + "\n");
