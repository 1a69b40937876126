// Runs @ag-ui/client's HttpAgent against a streamflow endpoint and prints what it saw as JSON.
// Usage: node run_agent.mjs <endpoint url>
import { HttpAgent } from "@ag-ui/client";

const [url] = process.argv.slice(2);
const seen = {
  events: [],
  texts: [],
  toolCalls: [],
  toolResults: [],
  steps: [],
  runErrors: [],
  runFailed: null,
  rejected: null,
  resolved: false,
  newMessages: null,
  messages: null,
};

const agent = new HttpAgent({
  url,
  threadId: "thread-42",
  initialMessages: [{ id: "user-1", role: "user", content: "What is SSE?" }],
});

const subscriber = {
  onEvent: ({ event }) => {
    seen.events.push(event);
  },
  onTextMessageEndEvent: ({ event, textMessageBuffer }) => {
    seen.texts.push({ messageId: event.messageId, text: textMessageBuffer });
  },
  onToolCallEndEvent: ({ event, toolCallName, toolCallArgs }) => {
    seen.toolCalls.push({ id: event.toolCallId, name: toolCallName, args: toolCallArgs });
  },
  onToolCallResultEvent: ({ event }) => {
    seen.toolResults.push({ toolCallId: event.toolCallId, content: event.content, metadata: event.metadata });
  },
  onStepStartedEvent: ({ event }) => {
    seen.steps.push(["started", event.stepName]);
  },
  onStepFinishedEvent: ({ event }) => {
    seen.steps.push(["finished", event.stepName]);
  },
  onRunErrorEvent: ({ event }) => {
    seen.runErrors.push(event);
  },
  onRunFailed: ({ error }) => {
    seen.runFailed = { name: error.name, message: error.message };
  },
};

try {
  const result = await agent.runAgent({ runId: "run-7", forwardedProps: { topic: "SSE" } }, subscriber);
  seen.resolved = true;
  seen.newMessages = result.newMessages;
} catch (error) {
  seen.rejected = { name: error.name, message: error.message };
}
seen.messages = agent.messages;
process.stdout.write(JSON.stringify(seen) + "\n");
