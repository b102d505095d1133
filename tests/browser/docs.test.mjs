// /docs in headless Chromium, against a real skiff at SKIFF_URL (scripts/test-browser
// starts one): the page renders under its real Content-Security-Policy, lists
// every operation of /openapi.json, "Try it out" on GET /hello shows `hello`,
// and nothing fails or leaves for another host. Screenshots go to target/browser/.
import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const BASE = process.env.SKIFF_URL;
assert.ok(BASE, "set SKIFF_URL to a running skiff, e.g. http://127.0.0.1:8080");
const ORIGIN = new URL(BASE).origin;
const ARTIFACTS = fileURLToPath(new URL("../../target/browser/", import.meta.url));
const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

let browser;
let page;
// Everything that went wrong or left skiff, over the whole run.
const problems = [];
const requests = [];

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  // Playwright starts Chromium with a fresh temporary profile and removes it
  // on close. The network flags stop Chromium's own background traffic, which
  // a closed network refuses and which is not the page's doing.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  // bypassCSP stays false: the page runs under the headers skiff sends.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // Injected by the browser, not the page, so the CSP does not apply to it;
  // makes every violation a console error even where Chromium is quiet.
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) =>
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`),
    );
  });
  context.on("request", (r) => {
    const url = new URL(r.url());
    if (url.protocol === "data:" || url.protocol === "blob:") return; // not a network request
    requests.push(`${r.method()} ${r.url()}`);
    if (url.origin !== ORIGIN) problems.push(`request to another host: ${r.url()}`);
  });
  context.on("requestfailed", (r) =>
    problems.push(`failed request: ${r.url()} (${r.failure()?.errorText})`),
  );
  context.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
});

after(async () => {
  if (page && problems.length) {
    await page.screenshot({ path: `${ARTIFACTS}/docs-failure.png`, fullPage: true });
  }
  await browser?.close();
});

/// "GET /hello" for every operation of the document skiff serves.
async function documentedOperations() {
  const doc = await (await fetch(`${BASE}/openapi.json`)).json();
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    METHODS.filter((m) => item[m]).map((m) => `${m.toUpperCase()} ${path}`),
  );
}

test("the page renders under its Content-Security-Policy", async () => {
  const response = await page.goto(`${BASE}/docs`);
  assert.equal(response.status(), 200);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp ?? "", /script-src 'self'/, "the page is served with its CSP");
  assert.doesNotMatch(csp, /unsafe-/);
  await page.locator(".opblock").first().waitFor();
  const title = await page.locator(".swagger-ui .info .title").first().innerText();
  assert.match(title, /^skiff/, "the title of the document skiff serves");
});

test("it lists every operation of /openapi.json", async (t) => {
  const expected = await documentedOperations();
  assert.ok(expected.includes("GET /hello"), "the document has GET /hello");
  await page.waitForFunction((n) => document.querySelectorAll(".opblock").length >= n, expected.length);
  const listed = await page.$$eval(".opblock", (blocks) =>
    blocks.map(
      (b) =>
        `${b.querySelector(".opblock-summary-method").textContent} ` +
        b.querySelector(".opblock-summary-path").getAttribute("data-path"),
    ),
  );
  assert.deepEqual([...listed].sort(), [...expected].sort());
  t.diagnostic(`listed: ${listed.join(", ")}`);
  await page.screenshot({ path: `${ARTIFACTS}/docs.png`, fullPage: true });
});

test('"Try it out" on GET /hello shows hello', async () => {
  const op = page
    .locator(".opblock.opblock-get")
    .filter({ has: page.locator('.opblock-summary-path[data-path="/hello"]') });
  await op.locator(".opblock-summary").click();
  await op.getByRole("button", { name: "Try it out" }).click();
  const [answer] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/hello"),
    op.getByRole("button", { name: "Execute" }).click(),
  ]);
  assert.equal(new URL(answer.url()).origin, ORIGIN, "the request goes to this skiff");
  assert.equal(answer.status(), 200);
  const body = op.locator(".live-responses-table .response-col_description pre").first();
  await body.waitFor();
  assert.equal((await body.innerText()).trim(), "hello");
  await op.screenshot({ path: `${ARTIFACTS}/docs-try-hello.png` });
});

test("no console error, failed request or request to another host", async (t) => {
  await page.waitForLoadState("networkidle");
  t.diagnostic(`${requests.length} requests: ${requests.join(", ")}`);
  assert.deepEqual(problems, []);
});
