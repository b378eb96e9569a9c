// Drives a ClosedMesh entry node with the official `openai` npm package.
// Usage: node entry_client.mjs <baseURL> <model> <key>. Prints one JSON line with what it observed.
import OpenAI from "openai";

const [baseURL, model, key] = process.argv.slice(2);
const opts = { baseURL, maxRetries: 0, timeout: 120_000 };
const messages = [{ role: "user", content: "What is the capital of France?" }];

// The open model list: no valid key needed.
const ids = [];
for await (const m of await new OpenAI({ ...opts, apiKey: "not-a-key" }).models.list()) ids.push(m.id);

let refused = null;
try {
  await new OpenAI({ ...opts, apiKey: "not-a-key" }).chat.completions.create({ model, messages, max_tokens: 4 });
} catch (e) {
  refused = { status: e.status, code: e.code, name: e.constructor.name, message: e.message };
}

const client = new OpenAI({ ...opts, apiKey: key });
const { data: chat, response } = await client.chat.completions
  .create({ model, messages, max_tokens: 16, temperature: 0 })
  .withResponse();
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
});
let streamed = "";
let last = null;
for await (const chunk of stream) {
  if (chunk.choices.length && chunk.choices[0].delta.content) streamed += chunk.choices[0].delta.content;
  last = chunk;
}

// Cheap requests (404 after the gate) until the key's limit answers.
let limited = null;
for (let i = 0; i < 10 && limited === null; i++) {
  try {
    await client.chat.completions.create({ model: "no-such-model", messages });
  } catch (e) {
    if (e.status !== 404) limited = { status: e.status, code: e.code, name: e.constructor.name };
  }
}

console.log(JSON.stringify({
  ids,
  refused,
  chat: { content: chat.choices[0].message.content, usage: chat.usage,
          remaining: response.headers.get("x-ratelimit-remaining-requests") },
  stream: { text: streamed, lastChoices: last.choices.length, usage: last.usage },
  limited,
}));
