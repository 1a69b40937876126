// The chat page: POST a prompt, read the event stream with fetch + getReader() (in
// readEvents), render the chat history and the streaming answer. All text reaches the page as
// text nodes (textContent, append), never as HTML.
import { readEvents } from "./sse.js";

const $ = (selector) => document.querySelector(selector);
const form = $("#chat-form");
const promptBox = $("#prompt");
const sendButton = $("#send");
const stopButton = $("#stop");
const messages = $("#messages");
const history = $("#history");

let conversation = newConversationId();
let running = null; // the AbortController of the turn in progress

function newConversationId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8)); // works on plain http too
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function messageElement(role, content) {
  const node = element("div", `message ${role}`);
  node.dataset.role = role;
  node.append(element("div", "role", role === "user" ? "you" : role), element("div", "content", content));
  return node;
}

function setStatus(status, text) {
  document.body.dataset.status = status; // idle, streaming, done, error or stopped
  $("#status").textContent = text;
}

function scrollDown() {
  messages.scrollTop = messages.scrollHeight;
}

/** The server's history of the conversation so far replaces what the page showed. */
function showHistory(items, currentTurn) {
  history.replaceChildren(...items.map((item) => messageElement(item.role, item.content)));
  for (const turn of messages.querySelectorAll(".turn")) if (turn !== currentTurn) turn.remove();
}

function showConversationId() {
  $("#conversation").textContent = conversation;
}

async function send(prompt) {
  running = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  $("#empty").hidden = true;

  // The prompt and the answer as they stream, until the history of the next turn replaces them.
  const turn = element("div", "turn");
  const answer = messageElement("assistant", "");
  answer.classList.add("streaming");
  const steps = element("ol", "steps");
  const errorBox = element("p", "error");
  errorBox.hidden = true;
  answer.insertBefore(steps, answer.querySelector(".content"));
  answer.append(errorBox);
  turn.append(messageElement("user", prompt), answer);
  messages.append(turn);
  const content = answer.querySelector(".content");
  const stepItems = new Map();
  let done = false;
  let failed = false;
  setStatus("streaming", "Sending…");
  scrollDown();

  try {
    const response = await fetch(`response/${conversation}`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ prompt }),
      signal: running.signal,
    });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    for await (const message of readEvents(response.body)) {
      const event = JSON.parse(message.data);
      switch (event.type) {
        case "chat_history":
          showHistory(event.value, turn);
          break;
        case "step_start": {
          const item = element("li", "running", event.step);
          item.dataset.step = event.step;
          item.dataset.state = "running";
          steps.append(item);
          stepItems.set(event.step, item);
          setStatus("streaming", `Running ${event.step}…`);
          break;
        }
        case "step_end": {
          const item = stepItems.get(event.step);
          if (!item) break;
          item.className = item.dataset.state = "finished";
          if (event.output !== undefined) item.append(element("span", "output", JSON.stringify(event.output)));
          break;
        }
        case "delta":
          content.append(event.value); // a text node: markup in the answer stays text
          break;
        case "error":
          failed = true;
          errorBox.textContent = event.message;
          errorBox.hidden = false;
          for (const item of stepItems.values()) {
            if (item.dataset.state === "running") item.className = item.dataset.state = "failed";
          }
          break;
        case "done":
          done = true;
          break;
      }
      scrollDown();
      if (done) break; // leaving the loop releases the body
    }
    if (!done) throw new Error("the connection closed before the answer was complete");
    if (failed) setStatus("error", "The answer failed; send another prompt to go on.");
    else setStatus("done", "Done.");
  } catch (error) {
    if (running.signal.aborted) setStatus("stopped", "Stopped: the server stopped the model too.");
    else setStatus("error", `Failed: ${error.message}`);
  } finally {
    answer.classList.remove("streaming");
    running = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = promptBox.value;
  if (running || prompt.trim() === "") return;
  promptBox.value = "";
  send(prompt);
});
promptBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});
stopButton.addEventListener("click", () => running?.abort());
$("#new-conversation").addEventListener("click", () => {
  running?.abort();
  conversation = newConversationId();
  showConversationId();
  history.replaceChildren();
  for (const turn of messages.querySelectorAll(".turn")) turn.remove();
  $("#empty").hidden = false;
  setStatus("idle", "New conversation.");
});
for (const button of document.querySelectorAll("[data-prompt]")) {
  button.addEventListener("click", () => {
    promptBox.value = button.dataset.prompt;
    promptBox.focus();
  });
}
showConversationId();
setStatus("idle", "Ready.");
