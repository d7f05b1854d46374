// End-to-end test of the web console in a real headless Chromium (Debian's, driven by
// playwright-core) against a real gpufn with simulated GPUs and the Python test function.
// Screenshots of every page go to artifacts/console/ (kept by CI).
//
// Run from console/: `npm ci && node test/console.test.mjs` (scripts/test.sh does), after
// `cargo build` (it uses target/debug/gpufn, or $GPUFN_BIN).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { FILES } from "../scripts/vendor.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const consoleDir = resolve(here, "..");
const repo = resolve(consoleDir, "..");
const BIN = process.env.GPUFN_BIN || join(repo, "target/debug/gpufn");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const FIXTURES = join(repo, "crates/gpufn-cli/tests/fixtures");
const SHOTS = join(repo, "artifacts/console");
mkdirSync(SHOTS, { recursive: true });

const steps = [];
function step(name) {
  steps.push(name);
  console.log(`- ${name}`);
}

// The vendored libraries are exactly the pinned npm packages.
for (const [from, to] of FILES) {
  assert.deepEqual(readFileSync(join(consoleDir, to)), readFileSync(join(consoleDir, from)), `${to} differs from ${from}: run npm run vendor`);
}

function startGpufn(dataDir) {
  return new Promise((resolveStart, reject) => {
    const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
      "--simulate-gpus", "2xtesla-t4:16", "--shutdown-grace-s", "2"], { stdio: ["ignore", "ignore", "pipe"] });
    let log = "";
    const timer = setTimeout(() => reject(new Error(`gpufn did not start:\n${log}`)), 30000);
    child.stderr.on("data", (d) => {
      log += d;
      const m = /gpufn listening on (http:\/\/\S+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolveStart({ child, url: m[1], log: () => log });
      }
    });
    child.on("exit", (code) => reject(new Error(`gpufn exited ${code}:\n${log}`)));
  });
}

const data = mkdtempSync(join(tmpdir(), "gpufn-console-"));
const server = await startGpufn(data);
// The first admin token gpufn wrote on its first start; Node's own API calls send it too.
const TOKEN = readFileSync(join(data, "admin.token"), "utf8").trim();
const authed = (path, opts = {}) => fetch(`${server.url}${path}`, { ...opts, headers: { ...(opts.headers || {}), authorization: `Bearer ${TOKEN}` } });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // A refused deploy is an expected 400 the browser logs as a failed load; script errors are not.
  page.on("console", (m) => {
    // A refused sign-in is an expected 401.
    if (m.type() === "error" && !/Failed to load resource: .* (400|401)/.test(m.text())) pageErrors.push(m.text());
  });
  const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  const ready = (hash) => page.waitForSelector(`body[data-ready="${hash}"]`, { timeout: 15000 });

  step("without a token the console asks for one; a wrong one is refused");
  await page.goto(`${server.url}/console`);
  await ready("login");
  await page.fill("#login-token", "gpufn_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
  await page.click("#login-form button");
  await page.waitForFunction(() => /not valid/.test(document.querySelector("#login-msg")?.textContent || ""));
  await shot("00-login");

  step("a /console#token= link logs in and clears the token from the address bar");
  await page.goto(`${server.url}/console#token=${encodeURIComponent(TOKEN)}`);
  await ready("#/");
  assert.ok(!page.url().includes(TOKEN), `the token left the address bar: ${page.url()}`);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("gpufn-token")), TOKEN);
  assert.match(await page.textContent("#who"), /^admin/);
  assert.ok(!(await page.content()).includes(TOKEN), "the token is not shown on the page");

  step("the functions page loads, empty");
  await page.waitForSelector("text=No functions yet");
  await shot("01-functions-empty");

  step("a bad spec shows each broken rule next to its field, and deploys nothing");
  await page.click('a[data-nav="deploy"]');
  await ready("#/deploy");
  const bad = `name: web\ncommand: [python3, testfn.py]\nworkdir: ${FIXTURES}\ngpu: {memory_gb: 0}\ninstance_concurrency: 500\n`;
  await page.fill("textarea.code", bad);
  await page.click(".deploy-btn");
  const memErr = await page.waitForSelector('.errors li[data-field="gpu.memory_gb"]');
  assert.match(await memErr.textContent(), /must be >= 1/);
  assert.match(await memErr.textContent(), /line 4/);
  await page.waitForSelector('.errors li[data-field="instance_concurrency"]');
  assert.equal(await page.locator(".gutter div.err").count(), 2);
  await shot("02-deploy-errors");
  const none = await (await authed("/api/v1/functions")).json();
  assert.equal(none.length, 0);

  step("a good spec deploys from the page and opens the function");
  const good = `name: web\ncommand: [python3, testfn.py]\nworkdir: ${FIXTURES}\ngpu: {type: tesla-t4, memory_gb: 2}\n` +
    `health_check: {path: /health, startup_timeout_s: 30}\nscaling: {idle_timeout_s: 3}\n`;
  await page.fill("textarea.code", good);
  await page.click(".deploy-btn");
  await ready("#/f/web");
  await page.waitForSelector("text=no instances");

  step("invoking from the page shows status, the cold start, headers and body");
  await page.fill("#inv-path", "/work?ms=20");
  await page.click("#inv-send");
  await page.waitForSelector(".inv-status");
  assert.match(await page.textContent(".inv-status"), /^200/);
  assert.equal(await page.textContent(".inv-cold"), "cold start");
  assert.match(await page.textContent(".inv-headers"), /x-gpufn-cold-start: true/);
  await page.click("#inv-send");
  await page.waitForFunction(() => document.querySelector(".inv-cold")?.textContent === "warm");

  step("the cold start appears in the chart and in the phase breakdown");
  await page.waitForFunction(() => {
    const c = window.gpufnCharts.requests;
    return c && c.data[2].reduce((a, b) => a + (b || 0), 0) >= 1 && c.data[1].reduce((a, b) => a + (b || 0), 0) >= 2;
  }, null, { timeout: 15000 });
  await page.waitForSelector(".phase-row .stack span");
  await page.waitForFunction(() => window.gpufnCharts.gb_seconds.data[1].reduce((a, b) => a + (b || 0), 0) > 0, null, { timeout: 15000 });
  await shot("03-function");

  step("the spec is editable on the function page: a bad edit shows its field, a good one redeploys");
  const spec = page.locator("#spec-editor textarea");
  const original = await spec.inputValue();
  assert.match(original, /memory_gb: 2/);
  assert.doesNotMatch(original, /null/, "unset fields are left out of the editable YAML");
  await spec.fill(original.replace("memory_gb: 2", "memory_gb: 64"));
  await page.click("#spec-editor .deploy-btn");
  const fitErr = await page.waitForSelector('#spec-editor .errors li[data-field="gpu.memory_gb"]');
  assert.match(await fitErr.textContent(), /16/);
  await spec.fill(original.replace("idle_timeout_s: 3", "idle_timeout_s: 2"));
  await page.click("#spec-editor .deploy-btn");
  await page.waitForSelector("text=deployed web, revision 2");
  await page.waitForSelector("#rev:has-text('revision 2')");

  step("the instance log can be read from the page");
  await page.click("#log-load");
  await page.waitForFunction(() => /testfn/.test(document.querySelector("#log-text").textContent));

  step("the instance list goes back to zero after the idle timeout");
  await page.waitForSelector(".no-instances", { timeout: 30000 });
  await shot("04-function-scaled-to-zero");

  step("the functions table shows invocations and cold starts");
  await page.click('a[data-nav="functions"]');
  await ready("#/");
  await page.waitForFunction(() => /2 \/ 2/.test(document.querySelector('tr[data-fn="web"]')?.textContent || ""));
  const row = await page.textContent('tr[data-fn="web"]');
  assert.match(row, /tesla-t4 · 2 GB/);
  assert.match(row, /1 \(50\.0 %\)/);
  await shot("05-functions");

  step("the quota is editable on the GPUs page");
  await page.click('a[data-nav="gpus"]');
  await ready("#/gpus");
  assert.equal(await page.locator("#gpu-table tbody tr").count(), 2);
  await page.fill("#quota-input", "5");
  await page.click("#quota-save");
  await page.waitForSelector("text=saved: 5 cards");
  assert.equal((await (await authed("/api/v1/quota")).json()).cards, 5);
  await shot("06-gpus");

  step("the cost estimator gives the product document's example 2");
  await page.click('a[data-nav="cost"]');
  await ready("#/cost");
  await page.click("#c-ex2");
  await page.waitForFunction(() => document.querySelector(".c-serverless")?.textContent === "$3.6000");
  assert.equal(await page.textContent(".c-dedicated"), "$48.00");
  assert.equal(await page.textContent(".c-saving"), "92.50 %");
  await shot("07-cost");

  step("a secret a function uses is shown by name, never by value");
  const SECRET = "hf_console_s3cr3t_7c1d";
  let r = await authed("/api/v1/secrets/hf-token", {
    method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ value: SECRET }),
  });
  assert.equal(r.status, 200);
  r = await authed("/api/v1/functions", {
    method: "POST", headers: { "content-type": "application/yaml" },
    body: `name: sec\ncommand: [python3, testfn.py]\nworkdir: ${FIXTURES}\ngpu: {memory_gb: 1}\nenv_from_secrets: {HF_TOKEN: hf-token}\n`,
  });
  assert.equal(r.status, 201, await r.text());
  await page.goto(`${server.url}/console#/f/sec`);
  await ready("#/f/sec");
  await page.waitForFunction(() => /hf-token/.test(document.querySelector("#spec-editor")?.textContent + document.querySelector("#spec-editor textarea")?.value));
  await page.fill("#inv-path", "/echo");
  await page.click("#inv-send");
  await page.waitForSelector(".inv-status");
  // The app itself may print its environment (this one does, in /echo): that is the app's answer
  // to its caller; what gpufn shows of the function (spec, instances, stats, logs) never has it.
  const shown = await page.evaluate(() => {
    const inv = document.querySelector("#inv-result");
    if (inv) inv.remove();
    return document.body.innerText + [...document.querySelectorAll("textarea")].map((t) => t.value).join("\n");
  });
  assert.ok(!shown.includes(SECRET), "the console shows a secret's value");
  assert.ok(shown.includes("hf-token"), "the console shows the secret's name");
  await shot("09-secret-by-name");

  step("the function page shows the schedule, target tracking and the initializer's phase");
  r = await authed("/api/v1/functions", {
    method: "POST", headers: { "content-type": "application/yaml" },
    body: `name: planned\ncommand: [python3, testfn.py]\nworkdir: ${FIXTURES}\ngpu: {memory_gb: 1}\n` +
      `env: {INIT_MS: '50'}\nlifecycle: {initializer: {path: /initialize}}\n` +
      `scaling:\n  schedules: [{name: nightly, cron: '0 3 * * *', timezone: Asia/Shanghai, min_instances: 0}]\n` +
      `  target_utilization: 0.5\n  max_provisioned: 2\n`,
  });
  assert.equal(r.status, 201, await r.text());
  await page.goto(`${server.url}/console#/f/planned`);
  await ready("#/f/planned");
  await page.waitForSelector(".schedules");
  assert.match(await page.textContent(".schedules"), /nightly: 0 3 \* \* \* Asia\/Shanghai → 0/);
  assert.match(await page.textContent(".provisioning"), /schedule "nightly" since .* CST: min 0 instances/);
  assert.match(await page.textContent(".provisioning"), /target utilization 0\.5: load .* → \d+ provisioned \(max 2\)/);
  await page.fill("#inv-path", "/work");
  await page.click("#inv-send");
  await page.waitForSelector(".inv-status");
  assert.match(await page.textContent(".inv-status"), /^200/);
  await page.waitForSelector('.phase-row .stack span[title^="initializer: "]');
  await shot("10-schedule-and-initializer");

  step("a viewer token sees functions but no deploy page, and signing out forgets the token");
  const created = await (await authed("/api/v1/tokens", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ role: "viewer" }),
  })).json();
  await page.evaluate(() => sessionStorage.clear());
  await page.goto(`${server.url}/console#token=${encodeURIComponent(created.token)}`);
  await ready("#/");
  assert.match(await page.textContent("#who"), /^viewer/);
  assert.equal(await page.isVisible('a[data-nav="deploy"]'), false, "a viewer cannot deploy");
  assert.equal(await page.isVisible('a.btn[href="#/deploy"]'), false, "no deploy button for a viewer");
  assert.equal(await page.isVisible('a[data-nav="functions"]'), true);
  await page.waitForSelector('tr[data-fn="web"]');
  await shot("08-viewer");
  await page.click('tr[data-fn="web"] a');
  await ready("#/f/web");
  assert.equal(await page.isVisible("#invoke-panel"), false, "a viewer cannot invoke");
  assert.equal(await page.isVisible("#delete-btn"), false, "a viewer cannot delete");
  await page.click("#logout");
  await ready("login");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("gpufn-token")), null);

  assert.deepEqual(pageErrors, [], "the page logged errors");
  console.log(`console test passed: ${steps.length} steps; screenshots in ${SHOTS}`);
} catch (e) {
  failed = true;
  console.error(e);
  console.error(`--- gpufn log ---\n${server.log()}`);
} finally {
  await browser.close();
  server.child.kill("SIGTERM");
  await new Promise((r) => server.child.once("exit", r));
  rmSync(data, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
