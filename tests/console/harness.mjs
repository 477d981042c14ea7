// Servers, CLI, admin API, SDK and browser helpers for the console tests.
//
// One mock-upstream and one `bursar serve` (SQLite in a temporary directory,
// free loopback ports) for the whole run; Debian's Chromium driven by
// playwright-core (never a downloaded browser).

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, "../..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, "target");
export const BURSAR_BIN = process.env.BURSAR_BIN || path.join(TARGET, "debug", "bursar");
export const MOCK_BIN = process.env.MOCK_BIN || path.join(TARGET, "debug", "mock-upstream");
export const PYTHON = process.env.SDK_PYTHON || path.join(ROOT, "tests", "sdk", ".venv", "bin", "python");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const SHOTS = process.env.BURSAR_SCREENSHOTS || path.join(ROOT, "docs", "screenshots");
export const ADMIN_KEY = "bsra_console_test_admin_key_01";
const OPENAI_SECRET = "sk-real-openai-secret-console-123456";

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

// Loopback never goes through a proxy.
process.env.NO_PROXY = [process.env.NO_PROXY, "127.0.0.1", "localhost"].filter(Boolean).join(",");

function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(BURSAR_|OPENAI_|ANTHROPIC_|CO_API_KEY|HF_TOKEN)/.test(k)) continue;
    env[k] = v;
  }
  env.NO_COLOR = "1";
  return { ...env, ...extra };
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startServer(name, argvForPort, env, dir, health) {
  const log = path.join(dir, `${name}.log`);
  let lastErr = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const out = fs.openSync(log, "a");
    const [cmd, ...args] = argvForPort(port);
    const child = spawn(cmd, args, { cwd: dir, env, stdio: ["ignore", out, out] });
    fs.closeSync(out);
    let exited = null;
    child.on("exit", (code) => { exited = code; });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (exited !== null) { lastErr = `${name} exited with ${exited}`; break; }
      try {
        const r = await fetch(url + health, { signal: AbortSignal.timeout(1000) });
        if (r.status === 200) return { child, url, log };
      } catch { /* not up yet */ }
      await sleep(50);
    }
    if (exited === null) { child.kill("SIGKILL"); lastErr = `${name} did not answer ${health} in 30 s`; }
  }
  const tail = fs.existsSync(log) ? fs.readFileSync(log, "utf8").split("\n").slice(-40).join("\n") : "";
  throw new Error(`${lastErr}\n${tail}`);
}

async function stopServer(s) {
  if (!s || s.child.exitCode !== null) return;
  const done = new Promise((r) => s.child.once("exit", r));
  s.child.kill("SIGTERM");
  const t = setTimeout(() => s.child.kill("SIGKILL"), 10_000);
  await done;
  clearTimeout(t);
}

export class Env {
  async start() {
    for (const bin of [BURSAR_BIN, MOCK_BIN]) {
      if (!fs.existsSync(bin)) throw new Error(`missing ${bin}: run cargo build --workspace --bins`);
    }
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), "bursar-console-"));
    this.mock = await startServer(
      "mock-upstream",
      (port) => [MOCK_BIN, "--listen", `127.0.0.1:${port}`],
      cleanEnv(),
      this.tmp,
      "/__mock/health",
    );
    const config = path.join(this.tmp, "bursar.toml");
    fs.writeFileSync(config, `[providers.openai]\nbase_url = "${this.mock.url}/v1"\napi_key = "${OPENAI_SECRET}"\n`);
    // CONSOLE_TEST_DATABASE=postgres://… runs the suite on PostgreSQL (an empty database).
    this.dbUrl = process.env.CONSOLE_TEST_DATABASE || `sqlite://${path.join(this.tmp, "b.db")}`;
    this.bursar = await startServer(
      "bursar",
      (port) => [BURSAR_BIN, "serve", "--listen", `127.0.0.1:${port}`, "--database", this.dbUrl, "--config", config],
      cleanEnv({ BURSAR_ADMIN_KEY: ADMIN_KEY }),
      this.tmp,
      "/healthz",
    );
    this.url = this.bursar.url;
    this.browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    return this;
  }

  async stop(keep) {
    try { await this.browser?.close(); } catch { /* already gone */ }
    await stopServer(this.bursar);
    await stopServer(this.mock);
    if (!keep && this.tmp) fs.rmSync(this.tmp, { recursive: true, force: true });
    else if (this.tmp) console.error(`console tests: logs and database kept in ${this.tmp}`);
  }

  logTail(lines = 40) {
    try {
      return fs.readFileSync(this.bursar.log, "utf8").split("\n").slice(-lines).join("\n");
    } catch { return ""; }
  }

  /** `bursar ARGS…` against the running gateway. */
  cli(args, input) {
    const r = spawnSync(BURSAR_BIN, args, {
      env: cleanEnv({ BURSAR_URL: this.url, BURSAR_ADMIN_KEY: ADMIN_KEY }),
      input: input ?? "",
      encoding: "utf8",
      timeout: 30_000,
    });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  async admin(method, p, body) {
    const r = await fetch(this.url + p, {
      method,
      headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch { /* not JSON */ }
    return { status: r.status, json, text };
  }

  /** Poll the admin API until a key has `n` usage rows (the writer is asynchronous). */
  async waitUsage(keyId, n = 1) {
    const deadline = Date.now() + 10_000;
    let rows = [];
    while (Date.now() < deadline) {
      rows = (await this.admin("GET", `/admin/v1/usage?key_id=${keyId}&limit=1000`)).json?.data ?? [];
      if (rows.length >= n) return rows;
      await sleep(50);
    }
    throw new Error(`expected ${n} usage rows for ${keyId}, got ${rows.length}`);
  }

  /** Run Python (the SDK suite's venv, with the official `openai` package). */
  python(code, env = {}) {
    const r = spawnSync(PYTHON, ["-c", code], {
      env: cleanEnv({ ...env, PYTHONDONTWRITEBYTECODE: "1" }),
      encoding: "utf8",
      timeout: 60_000,
    });
    if (r.error) throw r.error;
    return { code: r.status, stdout: r.stdout.trim(), stderr: r.stderr };
  }

  /** A chat completion through the official OpenAI SDK with a key; answers
   * {status, prompt_tokens, completion_tokens} or {status, error_type}. */
  openaiChat(secret, model, text) {
    const code = `
import json, os, openai
c = openai.OpenAI(base_url=os.environ["GW"] + "/v1", api_key=os.environ["KEY"], max_retries=0, timeout=20)
try:
    r = c.chat.completions.create(model=os.environ["MODEL"], messages=[{"role": "user", "content": os.environ["TEXT"]}])
    print(json.dumps({"status": 200, "prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens, "content": r.choices[0].message.content}))
except openai.APIStatusError as e:
    print(json.dumps({"status": e.status_code, "error_class": type(e).__name__, "error_type": (e.body or {}).get("type") if isinstance(e.body, dict) else None}))
`;
    const r = this.python(code, { GW: this.url, KEY: secret, MODEL: model, TEXT: text });
    if (r.code !== 0) throw new Error(`python failed: ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  async newContext(viewport = DESKTOP) {
    const context = await this.browser.newContext({ viewport, baseURL: this.url });
    context.setDefaultTimeout(10_000);
    return context;
  }

  /** A signed-in page for an account. */
  async signIn(name, password, viewport = DESKTOP) {
    const context = await this.newContext(viewport);
    const page = await context.newPage();
    await page.goto("/console/login");
    await page.fill("#f-name", name);
    await page.fill("#f-password", password);
    await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/console/login")), page.click("button[type=submit]")]);
    return { context, page };
  }

  /** Screenshots of the page as it is (no reload: some pages answer a
   * form post) at desktop and phone widths. */
  async shoot(page, name) {
    fs.mkdirSync(SHOTS, { recursive: true });
    const before = page.viewportSize();
    for (const [label, vp] of [["desktop", DESKTOP], ["phone", PHONE]]) {
      await page.setViewportSize(vp);
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: path.join(SHOTS, `${name}-${label}.png`) });
    }
    await page.setViewportSize(before);
  }

  /** Add historic usage rows (spread over `days`) straight into the
   * database, so charts have something to show in the screenshots. */
  seedHistory(keys, days = 7, perDay = 40) {
    const code = `
import json, os, random, time
random.seed(7)
keys = json.loads(os.environ["KEYS"])
days, per_day = int(os.environ["DAYS"]), int(os.environ["PER_DAY"])
models = [("gpt-4o-mini", "openai", 0.15, 0.60), ("echo", "echo", 1.0, 2.0), ("gpt-4o", "openai", 2.5, 10.0)]
now = int(time.time() * 1000)
rows, spend = [], {}
for d in range(days, 0, -1):
    for i in range(int(per_day * (0.6 + 0.8 * random.random()))):
        k = random.choice(keys)
        m, p, pi, po = random.choices(models, weights=[6, 3, 1])[0]
        t = now - d * 86400000 + random.randint(0, 86399999)
        pt, ct = random.randint(20, 1800), random.randint(5, 600)
        status = 200 if random.random() > 0.04 else random.choice([429, 502])
        cost = (pt * pi + ct * po) / 1e6 if status == 200 else 0.0
        rid = "req_%012x%020x" % (t, random.getrandbits(80))  # time-ordered, like the gateway's
        rows.append((rid, k["id"], k.get("user"), k.get("team"), None, p, m, "chat", status, pt, ct, cost, random.randint(40, 900), t))
        spend[k["id"]] = spend.get(k["id"], 0.0) + cost
def q(v):
    if v is None:
        return "NULL"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)
sql = ["BEGIN;"]
for r in rows:
    sql.append("INSERT INTO usage (request_id, key_id, user_name, team, purpose, provider, model, endpoint, status, prompt_tokens, completion_tokens, cost_usd, latency_ms, created_at) VALUES (%s);" % ", ".join(q(v) for v in r))
for k, s in spend.items():
    sql.append("UPDATE api_keys SET spend_usd = spend_usd + %r, last_used_at = %d WHERE id = %s;" % (s, now - 3600000, q(k)))
sql.append("COMMIT;")
url = os.environ["DB_URL"]
if url.startswith("sqlite:"):
    import sqlite3
    db = sqlite3.connect(url.split("://", 1)[-1].split("?")[0], timeout=30, isolation_level=None)
    db.executescript("\\n".join(sql))
else:
    import subprocess
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input="\\n".join(sql), text=True, check=True, stdout=subprocess.DEVNULL)
print(len(rows))
`;
    const r = spawnSync("python3", ["-c", code], {
      env: { ...process.env, KEYS: JSON.stringify(keys), DAYS: String(days), PER_DAY: String(perDay), DB_URL: this.dbUrl },
      encoding: "utf8",
      timeout: 60_000,
    });
    if (r.status !== 0) throw new Error(`seeding failed: ${r.stderr}`);
    return Number(r.stdout.trim());
  }
}
