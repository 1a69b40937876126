// Runs streamflow's encoder output through the AI SDK's own stream code, for
// tests/encoders/test_vercel.py. Reads JSON from stdin:
//   {"streams": [base64 body, ...], "chunkSizes": [n, ...]}  -> per stream: the chunk types the
//     SDK parsed, the final UIMessage readUIMessageStream built, the errors the stream reported
//     (error chunks) and the first failure (a chunk the SDK rejected or could not apply);
//   {"chunks": [json text, ...]} -> whether uiMessageChunkSchema accepts each one.
// Prints one JSON object.
import {
  DefaultChatTransport,
  parseJsonEventStream,
  readUIMessageStream,
  uiMessageChunkSchema,
} from "ai";

function byteStream(bytes, sizes) {
  return new ReadableStream({
    start(controller) {
      let position = 0;
      for (let turn = 0; position < bytes.length; turn++) {
        const size = Math.max(1, sizes.length ? sizes[turn % sizes.length] : bytes.length);
        controller.enqueue(bytes.subarray(position, position + size));
        position += size;
      }
      controller.close();
    },
  });
}

async function readStream(bytes, sizes) {
  const chunkTypes = [];
  const errors = [];
  let failure = null;
  // Exactly what useChat's DefaultChatTransport does with a response body.
  const chunks = new DefaultChatTransport().processResponseStream(byteStream(bytes, sizes)).pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        chunkTypes.push(chunk.type);
        controller.enqueue(chunk);
      },
    }),
  );
  let message = null;
  const onError = (error) => {
    if (error.name?.startsWith("AI_")) failure ??= `${error.name}: ${error.message}`;
    else errors.push(error.message);
  };
  for await (const snapshot of readUIMessageStream({ stream: chunks, onError })) message = snapshot;
  return { chunkTypes, errors, failure, message };
}

async function verdicts(texts) {
  const sse = texts.map((text) => `data: ${text}\n\n`).join("");
  const results = parseJsonEventStream({
    stream: byteStream(new TextEncoder().encode(sse), []),
    schema: uiMessageChunkSchema,
  });
  const out = [];
  for await (const result of results) out.push(result.success);
  if (out.length !== texts.length) throw new Error(`${out.length} results for ${texts.length} chunks`);
  return out;
}

let input = "";
for await (const piece of process.stdin) input += piece;
const request = JSON.parse(input);
const output = {};
if (request.streams) {
  output.streams = [];
  for (const body of request.streams) {
    output.streams.push(await readStream(Buffer.from(body, "base64"), request.chunkSizes ?? []));
  }
}
if (request.chunks) output.chunks = await verdicts(request.chunks);
process.stdout.write(JSON.stringify(output));
