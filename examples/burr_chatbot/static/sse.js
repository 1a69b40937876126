// A Server-Sent Events reader for fetch(): the parsing of the WHATWG HTML standard,
// "Server-sent events" > "Parsing an event stream"
// (https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream).
//
// EventSource can only GET. To POST a prompt, read response.body yourself -- with this, not
// with text.split("data: "): a chunk may end anywhere (mid-line, mid-character, between the
// CR and LF of one line break), lines may end in CR, LF or CRLF, one event may have several
// data lines, and ": ping" comments arrive between events.
//
//   for await (const message of readEvents(response.body)) {
//     const event = JSON.parse(message.data);   // {type: "delta", value: "..."} ...
//   }
//
// No dependencies, no build step: an ES module for browsers and Node.js.

/**
 * The incremental parser: feed(bytes) each chunk as it arrives, end() when the body ends.
 * onEvent({type, data, id}) runs for each event dispatched (type "message" unless an
 * `event:` field named it; id is the last event ID, which persists across events).
 */
export class SSEParser {
  #decoder = new TextDecoder("utf-8"); // strips one leading BOM; invalid bytes become U+FFFD
  #line = ""; // the start of a line whose end has not arrived yet
  #afterCR = false; // the last text ended with CR: an LF first in the next is the same break
  #data = []; // the data lines of the event being read
  #type = "";
  #id = ""; // the last event ID buffer

  /** The `id` of the last event dispatched (send it as Last-Event-ID to resume). */
  lastEventId = "";
  /** The reconnection time (ms) the stream asked for with `retry:`, or null. */
  retry = null;

  constructor(onEvent) {
    this.onEvent = onEvent;
  }

  /** Parse the next chunk of the body (a Uint8Array). */
  feed(bytes) {
    this.#text(this.#decoder.decode(bytes, { stream: true }));
  }

  /** The body ended: an event without its closing blank line is discarded, as the standard says. */
  end() {
    this.#text(this.#decoder.decode());
    this.#line = "";
    this.#afterCR = false;
    this.#data = [];
    this.#type = "";
  }

  #text(text) {
    if (text === "") return; // e.g. a chunk holding only the first bytes of a character
    let start = 0;
    if (this.#afterCR && text[0] === "\n") start = 1; // CR LF, cut between two chunks
    this.#afterCR = false;
    const lineBreak = /\r\n|\r|\n/g;
    lineBreak.lastIndex = start;
    for (let found; (found = lineBreak.exec(text)) !== null; ) {
      const line = this.#line + text.slice(start, found.index);
      this.#line = "";
      start = lineBreak.lastIndex;
      if (found[0] === "\r" && start === text.length) this.#afterCR = true; // its LF may follow
      this.#field(line);
    }
    this.#line += text.slice(start);
  }

  #field(line) {
    if (line === "") {
      this.#dispatch();
      return;
    }
    if (line[0] === ":") return; // a comment, such as the keep-alive ": ping"
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1); // one space, no more
    if (name === "data") this.#data.push(value);
    else if (name === "event") this.#type = value;
    else if (name === "id") {
      if (!value.includes("\0")) this.#id = value;
    } else if (name === "retry") {
      if (/^[0-9]+$/.test(value)) this.retry = Number(value);
    } // any other field is ignored
  }

  #dispatch() {
    this.lastEventId = this.#id;
    if (this.#data.length === 0) {
      this.#type = "";
      return;
    }
    const event = { type: this.#type || "message", data: this.#data.join("\n"), id: this.#id };
    this.#data = [];
    this.#type = "";
    this.onEvent(event); // last: the parser is ready for more even if onEvent throws
  }
}

/**
 * The events of a response body (a ReadableStream of bytes), as an async iterator. Leaving
 * the loop early (break, return, an exception) cancels the body, which closes the connection:
 * streamflow then stops the agent on the server.
 */
export async function* readEvents(body) {
  const reader = body.getReader();
  const ready = [];
  const parser = new SSEParser((event) => ready.push(event));
  let finished = false;
  try {
    while (!finished) {
      const { value, done } = await reader.read();
      if (done) {
        parser.end();
        finished = true;
      } else {
        parser.feed(value);
      }
      while (ready.length > 0) yield ready.shift();
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
