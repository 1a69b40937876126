// Feeds SSE bodies written by AGUIEncoder through @ag-ui/client, two ways, and prints one JSON
// result per body. Input (stdin): one JSON string per line, each the bytes of a whole response.
//
// 1. The client's own stream stages, exactly as HttpAgent chains them (agent.ts): the HTTP body
//    cut into 7-byte chunks -> transformHttpEventStream (SSE framing, JSON) -> enforceEvents
//    (the zod schemas) -> transformChunks -> verifyEvents (the event-order rules).
// 2. A whole HttpAgent.runAgent() whose fetch returns that body: middleware, verification, the
//    reducer and the subscriber callbacks, as an application runs them.
import { readFileSync } from "node:fs";
import {
  HttpAgent,
  enforceEvents,
  transformChunks,
  transformHttpEventStream,
  verifyEvents,
} from "@ag-ui/client";
import { Observable, lastValueFrom, toArray } from "rxjs";

const CONTENT_TYPE = "text/event-stream; charset=utf-8";
const encoder = new TextEncoder();

function chunks(body, size = 7) {
  const bytes = encoder.encode(body);
  const out = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.slice(i, i + size));
  return out;
}

async function verify(body) {
  // transformHttpEventStream subscribes at once: emit later, as a network response does.
  const http$ = new Observable((subscriber) => {
    setTimeout(() => {
      subscriber.next({ type: "headers", status: 200, headers: new Headers({ "content-type": CONTENT_TYPE }) });
      for (const data of chunks(body)) subscriber.next({ type: "data", data });
      subscriber.complete();
    });
  });
  const events$ = verifyEvents()(transformChunks()(enforceEvents()(transformHttpEventStream(http$))));
  try {
    const events = await lastValueFrom(events$.pipe(toArray()));
    return { ok: true, types: events.map((event) => event.type) };
  } catch (error) {
    return { ok: false, error: `${error.name}: ${error.message}` };
  }
}

async function run(body) {
  const fetch = async () =>
    new Response(
      new ReadableStream({
        start(controller) {
          for (const data of chunks(body)) controller.enqueue(data);
          controller.close();
        },
      }),
      { headers: { "content-type": CONTENT_TYPE } },
    );
  const agent = new HttpAgent({ url: "http://127.0.0.1:9/unused", fetch });
  let failed = null;
  let events = 0;
  const subscriber = {
    onEvent: () => {
      events += 1;
    },
    onRunFailed: ({ error }) => {
      failed = `${error.name}: ${error.message}`;
    },
  };
  try {
    await agent.runAgent({}, subscriber);
    return { ok: failed === null, error: failed, events };
  } catch (error) {
    return { ok: false, error: `${error.name}: ${error.message}`, events };
  }
}

const bodies = readFileSync(0, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line));
const results = [];
for (const body of bodies) {
  results.push({ verify: await verify(body), run: await run(body) });
}
process.stdout.write(JSON.stringify(results) + "\n");
