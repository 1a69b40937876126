// The engine behind useChat: AbstractChat (what @ai-sdk/react's Chat extends) with a minimal
// state and DefaultChatTransport({api}), driven with sendMessage({text}).
// Usage: node chat.mjs <base url>; prints {"<scenario>": result, ...} as JSON.
import { AbstractChat, DefaultChatTransport, safeValidateUIMessages } from "ai";

const base = process.argv[2];

class State {
  // As @ai-sdk/react's ChatState: every change makes new arrays, and records the status.
  statuses = [];
  error = undefined;
  messages = [];
  #status = "ready";
  get status() {
    return this.#status;
  }
  set status(value) {
    this.statuses.push(value);
    this.#status = value;
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), this.snapshot(message), ...this.messages.slice(index + 1)];
  };
  snapshot = (value) => structuredClone(value);
}

class Chat extends AbstractChat {
  constructor(api) {
    const log = { data: [], finishes: [], errors: [], toolCalls: [] };
    super({
      id: "chat-1",
      state: new State(),
      transport: new DefaultChatTransport({ api: base + api }),
      onData: (part) => log.data.push(part),
      onFinish: ({ isError, isAbort, isDisconnect, finishReason }) =>
        log.finishes.push({ isError, isAbort, isDisconnect, finishReason: finishReason ?? null }),
      onError: (error) => log.errors.push(error.message),
      onToolCall: ({ toolCall }) => log.toolCalls.push(toolCall.toolName),
    });
    this.log = log;
  }

  async result() {
    const valid = await safeValidateUIMessages({ messages: this.messages });
    return structuredClone({
      status: this.status,
      error: this.error ? { name: this.error.name, message: this.error.message } : null,
      statuses: this.state.statuses,
      messages: this.messages,
      // what an AI SDK backend's validateUIMessages says of the messages the stream built
      valid: valid.success,
      validationError: valid.success ? null : String(valid.error),
      ...this.log,
    }); // a copy: the chat goes on changing
  }
}

const out = {};

const chat = new Chat("/api/chat");
await chat.sendMessage({ text: "sse?" });
out.first = await chat.result();
await chat.sendMessage({ text: "and htmx?" }); // posts the first answer back: the server must read it
out.second = await chat.result();

const failing = new Chat("/api/fail");
await failing.sendMessage({ text: "fail" });
out.fail = await failing.result();

const messy = new Chat("/api/messy");
await messy.sendMessage({ text: "messy" });
out.messy = await messy.result();

process.stdout.write(JSON.stringify(out));
