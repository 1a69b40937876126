// Drives Debian's chromium (playwright-core, no browser download) through the page of
// tests/hub/test_browser_reconnect.py: the browser's own EventSource reads a hub session's
// stream, the server resets the first connection mid-answer, the EventSource reconnects.
// usage: node reconnect.mjs BASE_URL SCREENSHOT_PATH
// Prints one JSON object: {finished, streamRequests, failedRequests, pageErrors, consoleErrors, state}
// (consoleErrors: [{text, url}], url being where Chromium says the message comes from).
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

try {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  const page = await context.newPage();
  const streamRequests = [];
  const failedRequests = [];
  const pageErrors = [];
  const consoleErrors = [];
  const isStream = (url) => /\/sessions\/[^/]+\/stream$/.test(new URL(url).pathname);
  page.on("request", (request) => {
    if (isStream(request.url())) {
      // allHeaders(): the headers the network stack sent (Last-Event-ID is added there)
      streamRequests.push(
        request.allHeaders().then((headers) => ({ url: request.url(), lastEventId: headers["last-event-id"] ?? null })),
      );
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
    await page.goto(base + "/");
    await page.waitForFunction(() => window.__test && window.__test.done, null, { timeout: 30000 });
  } catch (error) {
    finished = false;
    pageErrors.push("driver: " + String(error).split("\n")[0]);
  }
  await page.waitForTimeout(500); // a closed EventSource must not reconnect meanwhile
  const state = await page.evaluate(() => ({
    ...window.__test,
    text: document.querySelector("#answer").textContent,
    status: document.querySelector("#status").textContent,
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  await context.close();
  const sent = await Promise.all(streamRequests);
  console.log(JSON.stringify({ finished, streamRequests: sent, failedRequests, pageErrors, consoleErrors, state }));
} finally {
  await browser.close();
}
