// Runs the Burr chatbot page's SSE reader (examples/burr_chatbot/static/sse.js) under Node.js.
// stdin: [{data: <base64 bytes>, chunks: [sizes, repeated; [] = all at once]}]
// stdout: per case {events: [[type, data, id]...], lastEventId, retry}
// Every case goes through SSEParser (feed/end) and, to check readEvents() and its
// getReader() loop, through a ReadableStream cut the same way; both must agree.
import { readFileSync } from "node:fs";
import { SSEParser, readEvents } from "../../../examples/burr_chatbot/static/sse.js";

function pieces(bytes, chunks) {
  const result = [];
  for (let position = 0, turn = 0; position < bytes.length; turn++) {
    const size = chunks.length ? chunks[turn % chunks.length] : bytes.length;
    result.push(new Uint8Array(bytes.subarray(position, position + size)));
    position += size;
  }
  return result;
}

const cases = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const { data, chunks } of cases) {
  const parts = pieces(Buffer.from(data, "base64"), chunks);
  const events = [];
  const parser = new SSEParser((event) => events.push([event.type, event.data, event.id]));
  for (const part of parts) parser.feed(part);
  parser.end();

  const body = new ReadableStream({
    start(controller) {
      for (const part of parts) controller.enqueue(part);
      controller.close();
    },
  });
  const read = [];
  for await (const event of readEvents(body)) read.push([event.type, event.data, event.id]);
  if (JSON.stringify(read) !== JSON.stringify(events)) {
    throw new Error(`readEvents and SSEParser disagree on ${data} in ${JSON.stringify(chunks)}`);
  }
  results.push({ events, lastEventId: parser.lastEventId, retry: parser.retry });
}
process.stdout.write(JSON.stringify(results));
