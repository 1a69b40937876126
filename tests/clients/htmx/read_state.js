// What tests/clients/test_htmx.py asserts on, read from the DOM by tests/browser/drive.mjs
// (textContent: what a user sees as text). An expression: the function, called.
(function readState() {
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
})()
