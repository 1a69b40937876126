// Drives Debian's chromium with playwright-core through the pages of tests/clients/test_htmx.py.
// usage: node drive.mjs BASE_URL SCENARIOS_JSON
// Each scenario: {name, path, actions, until (a JS expression), timeout, wait (ms after `until`),
// screenshot}; actions: [{fill: [selector, text]} | {click: selector} | {waitFor: expression}].
// Prints one JSON object: {name: {finished, requests, pageErrors, consoleErrors, state}}.
import { chromium } from "playwright-core";

const [base, scenariosJson] = process.argv.slice(2);
const scenarios = JSON.parse(scenariosJson);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

// Everything the test asserts on, read from the DOM (textContent: what a user sees as text).
function readState() {
  const one = (selector) => document.querySelector(selector);
  const text = (selector) => (one(selector) ? one(selector).textContent : null);
  return {
    test: window.__test || null,
    pwned: window.__pwned === undefined ? null : window.__pwned,
    title: document.title,
    answerText: text("#answer"),
    answerHtml: one("#answer") ? one("#answer").innerHTML : null,
    answerOwnText: one("#answer")
      ? [...one("#answer").childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.data).join("")
      : null,
    answerChildren: one("#answer") ? [...one("#answer").children].map((e) => e.className) : [],
    pres: [...document.querySelectorAll("#answer pre")].map((pre) => pre.textContent),
    activity: [...document.querySelectorAll("#activity > *")].map((e) => [e.className, e.textContent]),
    history: [...document.querySelectorAll("#history .sf-chat-message")].map((m) => [
      m.querySelector(".sf-chat-role").textContent,
      m.querySelector(".sf-chat-content").textContent,
    ]),
    errors: text("#errors"),
    status: text("#status"),
    images: document.querySelectorAll("img").length,
    bodyScripts: document.querySelectorAll("body script").length,
    turns: [...document.querySelectorAll(".turn")].map((turn) => ({
      you: turn.querySelector(".you").textContent,
      answer: turn.querySelector(".answer").textContent,
      pres: [...turn.querySelectorAll(".answer pre")].map((pre) => pre.textContent),
      activity: [...turn.querySelectorAll(".activity > *")].map((e) => e.className),
    })),
  };
}

async function run(scenario) {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  const page = await context.newPage();
  const requests = [];
  const pageErrors = [];
  const consoleErrors = [];
  page.on("request", (request) => requests.push(request.url()));
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  let finished = true;
  try {
    await page.goto(base + scenario.path);
    for (const action of scenario.actions ?? []) {
      if (action.fill) await page.fill(...action.fill);
      else if (action.click) await page.click(action.click);
      else if (action.waitFor) await page.waitForFunction(action.waitFor, null, { timeout: 15000 });
    }
    await page.waitForFunction(scenario.until, null, { timeout: scenario.timeout ?? 15000 });
  } catch (error) {
    finished = false;
    pageErrors.push("driver: " + String(error).split("\n")[0]);
  }
  await page.waitForTimeout(scenario.wait ?? 0);
  const state = await page.evaluate(readState);
  if (scenario.screenshot) await page.screenshot({ path: scenario.screenshot, fullPage: true });
  await context.close();
  return [scenario.name, { finished, requests, pageErrors, consoleErrors, state }];
}

try {
  const results = await Promise.all(scenarios.map(run));
  console.log(JSON.stringify(Object.fromEntries(results)));
} finally {
  await browser.close();
}
