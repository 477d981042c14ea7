// Browser tests of the web console: headless Chromium against the real
// binary. Run with tests/console/run.sh (node --test).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { request as pwRequest } from "playwright-core";

import { DESKTOP, Env, PHONE } from "./harness.mjs";

const env = new Env();
let failed = false;

const ROOT_PW = "root passphrase for tests";
const BOB_PW = "bob's own passphrase";
const VERA_PW = "vera reads the numbers";
const ALICE_PW = "alice chose this one";

const state = {};

function step(name, fn) {
  test(name, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      console.error(`--- bursar log tail after "${name}":\n${env.logTail()}`);
      throw e;
    }
  });
}

before(async () => {
  await env.start();
  // Accounts: an admin with a password, members and a viewer; alice by invite.
  let r = env.cli(["console-user", "create", "--name", "root", "--role", "admin", "--password-stdin"], ROOT_PW + "\n");
  assert.equal(r.code, 0, r.stderr);
  r = env.cli(["console-user", "create", "--name", "bob", "--role", "member", "--team", "research", "--password-stdin"], BOB_PW);
  assert.equal(r.code, 0, r.stderr);
  r = env.cli(["console-user", "create", "--name", "vera", "--role", "viewer", "--password-stdin"], VERA_PW);
  assert.equal(r.code, 0, r.stderr);
  r = env.cli(["console-user", "create", "--name", "alice", "--role", "member", "--team", "research"]);
  assert.equal(r.code, 0, r.stderr);
  const m = r.stdout.match(/(http:\/\/\S+\/console\/invite\/[A-Za-z0-9_-]{43})/);
  assert.ok(m, `no invite link in: ${r.stdout}`);
  state.invite = m[1];
  // A team with limits and a budget; demo keys with history for the charts.
  let a = await env.admin("POST", "/admin/v1/teams", { name: "research", rpm: 100, budget: { usd: 50, period: "monthly" } });
  assert.equal(a.status, 201, a.text);
  a = await env.admin("POST", "/admin/v1/teams", { name: "platform", tpm: 200000, budget: { usd: 20, period: "weekly" }, guardrails: { dlp: "redact" } });
  assert.equal(a.status, 201, a.text);
  const demo = [];
  for (const k of [
    { name: "summarizer-prod", user: "bob", team: "research", purpose: "summarization", environment: "production", models: ["gpt-4o-mini", "echo"], rpm: 60, budget: { usd: 25, period: "monthly" } },
    { name: "ci-nightly", team: "platform", purpose: "ci", models: ["gpt-4o-mini"], endpoints: ["chat", "embeddings"], ttl_seconds: 30 * 86400, budget: { usd: 10, period: "weekly" } },
    { name: "eval-harness", user: "vera", team: "platform", purpose: "evaluation", max_tokens_per_request: 2000, tpm: 100000 },
  ]) {
    a = await env.admin("POST", "/admin/v1/keys", k);
    assert.equal(a.status, 201, a.text);
    demo.push({ id: a.json.id, user: k.user ?? null, team: k.team ?? null });
  }
  state.demo = demo;
  env.seedHistory(demo, 7, 45);
});

after(async () => {
  await env.stop(failed);
});

step("sign-in: wrong password is refused, the right one opens the console; pages are locked down", async () => {
  const context = await env.newContext();
  const page = await context.newPage();
  const first = await page.goto("/console/keys");
  assert.match(page.url(), /\/console\/login\?next=%2Fconsole%2Fkeys$/);
  const h = first.headers();
  assert.match(h["content-security-policy"], /default-src 'self'/);
  assert.match(h["content-security-policy"], /script-src 'self'/);
  assert.doesNotMatch(h["content-security-policy"], /unsafe-inline/);
  assert.equal(h["x-frame-options"], "DENY");
  assert.equal(h["referrer-policy"], "same-origin");
  await env.shoot(page, "login");

  await page.fill("#f-name", "root");
  await page.fill("#f-password", "not the password");
  const [bad] = await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  assert.equal(bad.status(), 401);
  assert.match(await page.textContent(".notice-error"), /Wrong name or password/);

  await page.fill("#f-password", ROOT_PW);
  await Promise.all([page.waitForURL("**/console/keys"), page.click("button[type=submit]")]);
  assert.match(await page.textContent("h1"), /API Keys/);
  const cookie = (await context.cookies()).find((c) => c.name === "bursar_session");
  assert.ok(cookie, "session cookie set");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.path, "/console");
  assert.match(cookie.value, /^[A-Za-z0-9_-]{43}$/);
  // No script or style is inline (the CSP would block it anyway).
  const html = await page.content();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/);
  assert.doesNotMatch(html, /\sstyle="/);
  state.root = { context, page };
});

step("an invite link sets a password and signs the member in", async () => {
  const context = await env.newContext();
  const page = await context.newPage();
  await page.goto(state.invite);
  assert.match(await page.textContent("h1"), /Welcome, alice/);
  await env.shoot(page, "invite");
  await page.fill("#f-password", "short");
  await page.fill("#f-password2", "short");
  const [weak] = await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  assert.equal(weak.status(), 400);
  assert.match(await page.textContent(".notice-error"), /at least 10 characters/);
  await page.fill("#f-password", ALICE_PW);
  await page.fill("#f-password2", ALICE_PW);
  await Promise.all([page.waitForURL("**/console/keys"), page.click("button[type=submit]")]);
  assert.match(await page.textContent(".empty h2"), /No API keys yet/);
  await env.shoot(page, "keys-empty");
  // The link works once.
  const again = await page.goto(state.invite);
  assert.equal(again.status(), 404);
  state.alice = { context, page };
});

step("admin creates a key; the shown secret works with the OpenAI SDK; usage shows the right cost; revoking gives the SDK 401", async () => {
  const { page } = state.root;
  await page.goto("/console/keys");
  await env.shoot(page, "keys");
  await page.click("text=Create key");
  await page.waitForURL("**/console/keys/new");
  await env.shoot(page, "key-new");
  // Validation errors name the field and keep what was typed.
  await page.fill("#f-name", "sdk-laptop");
  await page.fill("#f-models", "echo, gpt-4o-mini");
  await page.fill("#f-ip_allow", "10.0.0.0/33");
  const [invalid] = await Promise.all([page.waitForNavigation(), page.click("form.key-form button[type=submit]")]);
  assert.equal(invalid.status(), 400);
  assert.match(await page.textContent(".notice-error"), /ip_allow\[0\]: '10\.0\.0\.0\/33' is not an IP address or CIDR/);
  assert.equal(await page.inputValue("#f-name"), "sdk-laptop");
  await page.fill("#f-ip_allow", "");
  await page.fill("#f-user", "root");
  await page.fill("#f-purpose", "sdk test");
  await page.check("input[name=endpoints][value=chat]");
  await page.fill("#f-rpm", "600");
  await page.fill("#f-budget_usd", "5");
  await page.selectOption("#f-ttl", "2592000");
  await page.fill("#f-metadata", "cost_center=4711");
  const [created] = await Promise.all([page.waitForNavigation(), page.click("form.key-form button[type=submit]")]);
  assert.equal(created.status(), 201);
  const secret = (await page.textContent("[data-testid=secret]")).trim();
  assert.match(secret, /^bsr_[A-Za-z0-9]{36}$/);
  assert.match(await page.textContent(".notice-warn"), /shown only this once/);
  // The copy button copies the secret.
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"]);
  await page.click("button[data-copy=secret]");
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  await env.shoot(page, "key-created");
  await page.click("text=Open the key");
  const keyId = page.url().split("/").pop();
  assert.match(keyId, /^key_/);
  // Never shown again: not on the key's page, not in the list.
  assert.doesNotMatch(await page.content(), new RegExp(secret));
  await page.goto("/console/keys");
  assert.doesNotMatch(await page.content(), new RegExp(secret));

  // The official OpenAI SDK with the shown secret.
  const ok = env.openaiChat(secret, "echo", "hello from the console test");
  assert.equal(ok.status, 200, JSON.stringify(ok));
  assert.equal(ok.content, "hello from the console test");
  const want = (ok.prompt_tokens * 1.0 + ok.completion_tokens * 2.0) / 1e6;
  const rows = await env.waitUsage(keyId, 1);
  assert.ok(Math.abs(rows[0].cost_usd - want) < 1e-12, `${rows[0].cost_usd} vs ${want}`);

  // The usage page shows the request with its cost, equal to the admin API.
  await page.goto(`/console/usage?key_id=${keyId}&range=all`);
  assert.equal((await page.textContent("[data-testid=total-requests]")).trim(), "1");
  assert.equal((await page.textContent("[data-testid=total-cost]")).trim(), `$${want.toFixed(6)}`);
  const row = page.locator(`tr[data-request-id="${rows[0].request_id}"]`);
  assert.equal((await row.locator("td.cost").textContent()).trim(), `$${want.toFixed(6)}`);
  assert.match(await row.textContent(), /echo/);
  const api = await env.admin("GET", `/admin/v1/usage?key_id=${keyId}&group_by=model`);
  assert.equal(api.json.data.length, 1);
  assert.equal(api.json.data[0].requests, 1);
  assert.equal(api.json.data[0].prompt_tokens + api.json.data[0].completion_tokens,
    Number((await page.textContent("[data-testid=total-tokens]")).replace(/,/g, "")));
  assert.equal(`$${api.json.data[0].cost_usd.toFixed(6)}`, (await page.textContent("[data-testid=total-cost]")).trim());
  // CSV export carries the same row.
  const csv = await page.context().request.get(`/console/usage.csv?key_id=${keyId}&range=all`);
  assert.equal(csv.status(), 200);
  assert.match(csv.headers()["content-type"], /text\/csv/);
  const lines = (await csv.text()).trim().split("\n");
  assert.equal(lines.length, 2);
  assert.ok(lines[1].startsWith(rows[0].request_id));
  assert.ok(lines[1].includes(String(rows[0].cost_usd)));

  // Revoke in the console; the SDK gets 401 at once.
  await page.goto(`/console/keys/${keyId}`);
  await env.shoot(page, "key-detail");
  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForURL("**/console/keys?done=revoked"), page.click("text=Revoke key")]);
  assert.match(await page.textContent(".notice-ok"), /revoked/);
  const refused = env.openaiChat(secret, "echo", "after revoke");
  assert.equal(refused.status, 401, JSON.stringify(refused));
  assert.equal(refused.error_class, "AuthenticationError");
  const shown = await env.admin("GET", `/admin/v1/keys/${keyId}`);
  assert.equal(shown.json.status, "revoked");
  // The audit log names the console account.
  const audit = await env.admin("GET", "/admin/v1/audit?limit=1000");
  assert.ok(audit.json.data.some((e) => e.action === "key.revoke" && e.target === keyId && e.actor === "console:root"));
  state.sdkKey = keyId;
});

step("the usage page charts history, top keys and models, and pages through requests", async () => {
  const { page } = state.root;
  await page.goto("/console/usage?range=7d");
  const charts = await page.locator("figure.chart").count();
  assert.equal(charts, 4);
  assert.ok((await page.locator("figure.chart rect.bar").count()) > 7);
  assert.match(await page.textContent(".cards.two"), /summarizer-prod/);
  assert.match(await page.textContent(".cards.two"), /gpt-4o-mini/);
  // Totals equal the admin API for the same filter.
  const since = new URL(await page.locator(".api-hint code").textContent().then((t) => "http://x" + t.replace("GET ", ""))).searchParams.get("since");
  const api = await env.admin("GET", `/admin/v1/usage?since=${since}&group_by=model`);
  const total = api.json.data.reduce((a, g) => a + g.requests, 0);
  assert.equal(Number((await page.textContent("[data-testid=total-requests]")).replace(/,/g, "")), total);
  assert.equal(await page.locator("table.history tbody tr").count(), 50);
  await env.shoot(page, "usage");
  await page.click("text=Older →");
  assert.ok((await page.locator("table.history tbody tr").count()) > 0);
  // Filters narrow it down.
  await page.goto("/console/usage?range=30d&model=echo");
  const echoApi = await env.admin("GET", `/admin/v1/usage?model=echo&group_by=model&since=${Math.floor(Date.now() / 1000) - 30 * 86400}`);
  assert.equal(Number((await page.textContent("[data-testid=total-requests]")).replace(/,/g, "")), echoApi.json.data[0].requests);
});

step("a member creates keys within the team's limits and sees only their own", async () => {
  const { page } = state.alice;
  await page.goto("/console/keys/new");
  assert.equal(await page.locator("#f-user").count(), 0, "members cannot set the owner");
  await page.fill("#f-name", "alice-laptop");
  await page.fill("#f-models", "echo");
  await page.fill("#f-rpm", "1000");
  const [tooWide] = await Promise.all([page.waitForNavigation(), page.click("form.key-form button[type=submit]")]);
  assert.equal(tooWide.status(), 400);
  assert.match(await page.textContent(".notice-error"), /rpm: at most 100 \(the limit of team research\)/);
  await page.fill("#f-rpm", "50");
  const [ok] = await Promise.all([page.waitForNavigation(), page.click("form.key-form button[type=submit]")]);
  assert.equal(ok.status(), 201);
  await page.click("text=Open the key");
  const keyId = page.url().split("/").pop();
  const key = (await env.admin("GET", `/admin/v1/keys/${keyId}`)).json;
  assert.equal(key.user, "alice");
  assert.equal(key.team, "research");
  assert.equal(key.rpm, 50);
  assert.deepEqual(key.budget, { usd: 50, period: "monthly" }, "an empty budget takes the team's");
  state.aliceKey = keyId;
  // Her list has only her key; the usage page only her usage.
  await page.goto("/console/keys");
  const names = await page.locator("a.key-name").allTextContents();
  assert.deepEqual(names, ["alice-laptop"]);
  await page.goto("/console/usage?range=all");
  assert.equal((await page.textContent("[data-testid=total-requests]")).trim(), "0");
  assert.equal(await page.locator("input[name=user]").count(), 0);
});

step("a member cannot see or revoke another member's key (404)", async () => {
  const { context, page } = await env.signIn("bob", BOB_PW);
  state.bob = { context, page };
  await page.goto("/console/keys");
  const names = await page.locator("a.key-name").allTextContents();
  assert.ok(names.includes("summarizer-prod"), names.join());
  assert.ok(!names.includes("alice-laptop"), names.join());
  const seen = await page.goto(`/console/keys/${state.aliceKey}`);
  assert.equal(seen.status(), 404);
  assert.match(await page.textContent("main"), new RegExp(`No key with id '${state.aliceKey}'`));
  // Same answer as for a key that does not exist.
  const none = await page.goto("/console/keys/key_does_not_exist");
  assert.equal(none.status(), 404);
  await page.goto("/console/keys");
  const csrf = await page.locator("input[name=_csrf]").first().inputValue();
  for (const action of ["revoke", "rotate", "edit"]) {
    const r = await context.request.post(`/console/keys/${state.aliceKey}/${action}`, { form: { _csrf: csrf, name: "pwned" }, maxRedirects: 0 });
    assert.equal(r.status(), 404, `${action}: ${r.status()}`);
  }
  const still = await env.admin("GET", `/admin/v1/keys/${state.aliceKey}`);
  assert.equal(still.json.status, "active");
  assert.equal(still.json.name, "alice-laptop");
  // Members have no admin pages.
  assert.equal((await page.goto("/console/audit")).status(), 403);
  assert.equal((await page.goto("/console/accounts")).status(), 403);
});

step("changes without the CSRF token or the session cookie are refused", async () => {
  const { context, page } = state.alice;
  await page.goto(`/console/keys/${state.aliceKey}`);
  const csrf = await page.locator("input[name=_csrf]").first().inputValue();
  assert.match(csrf, /^[A-Za-z0-9_-]{43}$/);
  // Cookie but no token, and a wrong token: 403.
  let r = await context.request.post(`/console/keys/${state.aliceKey}/revoke`, { form: {}, maxRedirects: 0 });
  assert.equal(r.status(), 403);
  assert.match(await r.text(), /CSRF/);
  r = await context.request.post(`/console/keys/${state.aliceKey}/revoke`, { form: { _csrf: csrf.slice(0, -2) + "xx" }, maxRedirects: 0 });
  assert.equal(r.status(), 403);
  // Cookie and token, but posted from another site: 403.
  r = await context.request.post(`/console/keys/${state.aliceKey}/revoke`, { form: { _csrf: csrf }, headers: { origin: "http://evil.example" }, maxRedirects: 0 });
  assert.equal(r.status(), 403);
  // Token but no cookie: 401.
  const anon = await pwRequest.newContext({ baseURL: env.url });
  r = await anon.post(`/console/keys/${state.aliceKey}/revoke`, { form: { _csrf: csrf }, maxRedirects: 0 });
  assert.equal(r.status(), 401);
  r = await anon.post("/console/keys", { form: { _csrf: csrf, name: "x" }, maxRedirects: 0 });
  assert.equal(r.status(), 401);
  // A forged session cookie is no better.
  r = await anon.post(`/console/keys/${state.aliceKey}/revoke`, { form: { _csrf: csrf }, headers: { cookie: `bursar_session=${csrf}` }, maxRedirects: 0 });
  assert.equal(r.status(), 401);
  // A sign-in form posted without its form cookie (login CSRF): 403.
  r = await anon.post("/console/login", { form: { name: "alice", password: ALICE_PW, _form: csrf }, maxRedirects: 0 });
  assert.equal(r.status(), 403);
  await anon.dispose();
  assert.equal((await env.admin("GET", `/admin/v1/keys/${state.aliceKey}`)).json.status, "active");
  // With both, the same request works: the member rotates her key with grace.
  r = await context.request.post(`/console/keys/${state.aliceKey}/rotate`, { form: { _csrf: csrf, grace_seconds: "3600" }, maxRedirects: 0 });
  assert.equal(r.status(), 200);
  assert.match(await r.text(), /bsr_[A-Za-z0-9]{36}/);
  const rotated = (await env.admin("GET", `/admin/v1/keys/${state.aliceKey}`)).json;
  assert.ok(rotated.rotation_grace_until, JSON.stringify(rotated));
});

step("a member edits limits within the team's ceiling; a signed-out session cannot be reused", async () => {
  const { context, page } = state.alice;
  await page.goto(`/console/keys/${state.aliceKey}`);
  await page.click("summary:has-text('Edit scope and limits')");
  await page.fill("#f-rpm", "101");
  const [bad] = await Promise.all([page.waitForNavigation(), page.click("form.key-form button[type=submit]")]);
  assert.equal(bad.status(), 400);
  assert.match(await page.textContent(".notice-error"), /rpm: at most 100/);
  await page.fill("#f-rpm", "20");
  await page.fill("#f-tpm", "5000");
  await Promise.all([page.waitForURL("**?done=saved"), page.click("form.key-form button[type=submit]")]);
  const k = (await env.admin("GET", `/admin/v1/keys/${state.aliceKey}`)).json;
  assert.equal(k.rpm, 20);
  assert.equal(k.tpm, 5000);
  assert.deepEqual(k.models, ["echo"]);
  // Sign out; the old cookie is dead.
  const old = (await context.cookies()).find((c) => c.name === "bursar_session").value;
  await Promise.all([page.waitForURL("**/console/login"), page.click("text=Sign out")]);
  const anon = await pwRequest.newContext({ baseURL: env.url });
  const r = await anon.get("/console/keys", { headers: { cookie: `bursar_session=${old}` }, maxRedirects: 0 });
  assert.equal(r.status(), 303);
  await anon.dispose();
});

step("the teams, audit and accounts pages show limits, budgets, members and the verified chain", async () => {
  const { page } = state.root;
  await page.goto("/console/teams");
  const text = await page.textContent("main");
  assert.match(text, /research/);
  assert.match(text, /100 rpm/);
  assert.match(text, /\$50/);
  assert.match(text, /alice/);
  await env.shoot(page, "teams");
  await page.click("a:has-text('research')");
  await page.waitForURL("**/console/teams/research");
  await page.fill("#member-name", "carol");
  await Promise.all([page.waitForURL("**?done=member"), page.click("text=Add to team")]);
  assert.match(await page.textContent("main"), /carol/);
  await page.fill("#f-rpm", "120");
  await Promise.all([page.waitForURL("**?done=saved"), page.click("text=Save changes")]);
  assert.equal((await env.admin("GET", "/admin/v1/teams/research")).json.rpm, 120);
  await env.shoot(page, "team-detail");

  await page.goto("/console/audit");
  assert.match(await page.textContent("[data-testid=chain-status]"), /Chain intact/);
  assert.match(await page.textContent("table.audit"), /console:root/);
  await page.selectOption("select[name=action]", "key.");
  await Promise.all([page.waitForNavigation(), page.click("text=Filter")]);
  const actions = await page.locator("table.audit td[data-label=Action]").allTextContents();
  assert.ok(actions.length > 0 && actions.every((a) => a.startsWith("key.")), actions.join());
  await page.goto("/console/audit");
  await env.shoot(page, "audit");

  await page.goto("/console/accounts");
  assert.match(await page.textContent("main"), /vera/);
  await page.fill("#f-name", "dave");
  await Promise.all([page.waitForNavigation(), page.click("text=Create account")]);
  assert.match(await page.textContent("#invite-link"), /\/console\/invite\/[A-Za-z0-9_-]{43}$/);
  await env.shoot(page, "accounts");
});

step("a viewer sees usage only", async () => {
  const { context, page } = await env.signIn("vera", VERA_PW, PHONE);
  assert.match(page.url(), /\/console\/usage$/);
  assert.ok(Number((await page.textContent("[data-testid=total-requests]")).replace(/,/g, "")) > 0);
  assert.equal((await page.goto("/console/keys")).status(), 403);
  assert.equal((await page.goto("/console/teams")).status(), 403);
  assert.equal((await page.goto("/console/audit")).status(), 403);
  await context.close();
});

step("sign-in is rate limited per account: the sixth try after five failures is refused even with the right password", async () => {
  const context = await env.newContext();
  const page = await context.newPage();
  await page.goto("/console/login");
  for (let i = 0; i < 5; i++) {
    await page.fill("#f-name", "vera");
    await page.fill("#f-password", `guess-${i}-not-it`);
    const [r] = await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
    assert.equal(r.status(), 401);
  }
  await page.fill("#f-name", "vera");
  await page.fill("#f-password", VERA_PW);
  const [blocked] = await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  assert.equal(blocked.status(), 429);
  assert.match(await page.textContent(".notice-error"), /Too many failed sign-ins.*Try again in 15 minutes/);
  assert.ok(Number(blocked.headers()["retry-after"]) > 800);
  // Another account from the same address is not blocked.
  const bob = await env.signIn("bob", BOB_PW);
  assert.match(bob.page.url(), /\/console\/keys$/);
  await bob.context.close();
  const audit = await env.admin("GET", "/admin/v1/audit?limit=1000");
  assert.ok(audit.json.data.some((e) => e.action === "console.login_blocked" && e.target === "vera"));
  assert.ok(!JSON.stringify(audit.json.data).includes("-not-it"), "passwords never reach the audit log");
  await context.close();
});

step("changing the password signs every other session out", async () => {
  const other = state.bob;
  const { context, page } = await env.signIn("bob", BOB_PW);
  await page.goto("/console/password");
  await page.fill("#f-current", "not my password");
  await page.fill("#f-password", "bob's new passphrase");
  await page.fill("#f-password2", "bob's new passphrase");
  const [wrong] = await Promise.all([page.waitForNavigation(), page.click("form.stack button[type=submit]")]);
  assert.equal(wrong.status(), 400);
  assert.match(await page.textContent(".notice-error"), /current password is wrong/);
  await page.fill("#f-current", BOB_PW);
  await page.fill("#f-password", "bob's new passphrase");
  await page.fill("#f-password2", "bob's new passphrase");
  await Promise.all([page.waitForURL("**/console/keys"), page.click("form.stack button[type=submit]")]);
  // This browser stays signed in; the older session is gone.
  assert.equal((await page.goto("/console/keys")).status(), 200);
  await other.page.goto("/console/keys");
  assert.match(other.page.url(), /\/console\/login/);
  await other.context.close();
  await context.close();
  const again = await env.signIn("bob", "bob's new passphrase");
  assert.match(again.page.url(), /\/console\/keys$/);
  await again.context.close();
});

step("screens fit a phone: no horizontal scrolling on the main pages", async () => {
  const { context, page } = await env.signIn("root", ROOT_PW, PHONE);
  for (const p of ["/console/keys", "/console/usage", "/console/teams", "/console/audit", `/console/keys/${state.sdkKey}`, "/console/keys/new"]) {
    await page.goto(p);
    const [over, wide] = await page.evaluate(() => {
      const out = [];
      for (const el of document.querySelectorAll("main *")) {
        const r = el.getBoundingClientRect();
        if (r.right > window.innerWidth + 1) out.push(`${el.tagName} ${el.getAttribute("class") || ""} ${Math.round(r.right)}`);
      }
      return [document.documentElement.scrollWidth - window.innerWidth, out.slice(0, 5)];
    });
    assert.ok(over <= 1, `${p} overflows the phone width by ${over}px: ${wide.join("; ")}`);
  }
  await context.close();
  void DESKTOP;
});
