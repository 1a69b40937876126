// Reads streamflow runs with the AI SDK's own stream code, as DefaultChatTransport does:
// fetch, parseJsonEventStream with uiMessageChunkSchema (a chunk that fails it ends the
// stream), then readUIMessageStream to build the assistant UIMessage.
// Usage: node read_stream.mjs <base url>; prints {"<path>": result, ...} as JSON.
import { parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema } from "ai";

const base = process.argv[2];

async function read(path, text) {
  const response = await fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      id: "chat-1",
      messages: [{ id: "user-1", role: "user", parts: [{ type: "text", text }] }],
      trigger: "submit-message",
    }),
  });
  const chunks = [];
  const stream = parseJsonEventStream({ stream: response.body, schema: uiMessageChunkSchema }).pipeThrough(
    new TransformStream({
      transform(result, controller) {
        if (!result.success) throw result.error; // what DefaultChatTransport.processResponseStream does
        chunks.push(result.value);
        controller.enqueue(result.value);
      },
    }),
  );
  const errors = [];
  let failure = null;
  let message = null;
  let snapshots = 0;
  const onError = (error) => {
    if (error.name?.startsWith("AI_")) failure ??= `${error.name}: ${error.message}`;
    else errors.push(error.message); // an `error` chunk: new Error(errorText)
  };
  for await (const snapshot of readUIMessageStream({ stream, onError })) {
    message = snapshot;
    snapshots += 1;
  }
  return {
    status: response.status,
    contentType: response.headers.get("content-type"),
    protocol: response.headers.get("x-vercel-ai-ui-message-stream"),
    chunks,
    errors,
    failure,
    message,
    snapshots,
  };
}

const out = {};
for (const [path, text] of [["/api/chat", "sse?"], ["/api/fail", "fail"], ["/api/messy", "messy"]]) {
  out[path] = await read(path, text);
}
process.stdout.write(JSON.stringify(out));
