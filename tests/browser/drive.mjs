// The one browser driver for page tests: Debian's chromium through playwright-core (never a
// downloaded browser). usage: node drive.mjs BASE_URL SCENARIOS_JSON
// A scenario: {name, path, actions, until (a JS expression), timeout (ms), wait (ms after
// `until`), state (a JS expression: what the test asserts on), screenshot (a path)}.
// actions, in order: {fill: [selector, text]} | {click: selector} | {press: [selector, key]}
//   | {waitFor: expression, timeout?} | {screenshot: path} | {sleep: ms} | {evaluate: expression}
// headers (a regular expression): record the request headers the network stack sent (where
//   Last-Event-ID is added) for the requests whose URL matches, as {url, headers}.
// Prints one JSON object: {name: {finished, requests, failedRequests, pageErrors,
// consoleErrors, state, headers}}.
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

async function act(page, action) {
  if (action.fill) await page.fill(...action.fill);
  else if (action.click) await page.click(action.click);
  else if (action.press) await page.press(...action.press);
  else if (action.waitFor) await page.waitForFunction(action.waitFor, null, { timeout: action.timeout ?? 15000 });
  else if (action.screenshot) await page.screenshot({ path: action.screenshot, fullPage: true });
  else if (action.sleep) await page.waitForTimeout(action.sleep);
  else if (action.evaluate) await page.evaluate(action.evaluate);
  else throw new Error("unknown action " + JSON.stringify(action));
}

async function run(scenario) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 750 } });
  const page = await context.newPage();
  const requests = [];
  const failedRequests = [];
  const headers = [];
  const pageErrors = [];
  const consoleErrors = [];
  const recordHeaders = scenario.headers ? new RegExp(scenario.headers) : null;
  page.on("request", (request) => {
    requests.push(request.url());
    if (recordHeaders && recordHeaders.test(request.url())) {
      headers.push(request.allHeaders().then((sent) => ({ url: request.url(), headers: sent })));
    }
  });
  page.on("requestfailed", (request) => {
    failedRequests.push({ url: request.url(), failure: request.failure()?.errorText ?? null });
  });
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push({ text: message.text(), url: message.location().url });
  });
  let finished = true;
  try {
    await page.goto(base + scenario.path);
    for (const action of scenario.actions ?? []) await act(page, action);
    if (scenario.until) await page.waitForFunction(scenario.until, null, { timeout: scenario.timeout ?? 15000 });
  } catch (error) {
    finished = false;
    pageErrors.push("driver: " + String(error).split("\n")[0]);
  }
  await page.waitForTimeout(scenario.wait ?? 0);
  let state = null;
  try {
    state = await page.evaluate(scenario.state ?? "null");
  } catch (error) {
    pageErrors.push("driver: state: " + String(error).split("\n")[0]);
  }
  if (scenario.screenshot) await page.screenshot({ path: scenario.screenshot, fullPage: true });
  await context.close();
  const sent = await Promise.all(headers);
  return [scenario.name, { finished, requests, failedRequests, pageErrors, consoleErrors, state, headers: sent }];
}

try {
  const results = await Promise.all(scenarios.map(run));
  console.log(JSON.stringify(Object.fromEntries(results)));
} finally {
  await browser.close();
}
