// Drives a running ClosedMesh node with the official `openai` npm package.
// Usage: node client.mjs <baseURL> <model>. Prints one JSON line with what it observed; exits non-zero
// on any failure.
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "anything", maxRetries: 0, timeout: 120_000 });
const messages = [{ role: "user", content: "What is the capital of France?" }];

const models = await client.models.list();
const ids = [];
for await (const m of models) ids.push(m.id);

const chat = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0 });

const stream = await client.chat.completions.create({
  model, messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
});
let streamed = "";
let role = null;
let last = null;
let finish = null;
for await (const chunk of stream) {
  if (chunk.choices.length && chunk.choices[0].delta.role) role = chunk.choices[0].delta.role;
  if (chunk.choices.length && chunk.choices[0].delta.content) streamed += chunk.choices[0].delta.content;
  if (chunk.choices.length && chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  last = chunk;
}

let notFound = null;
try {
  await client.chat.completions.create({ model: "no-such-model", messages });
} catch (e) {
  notFound = { status: e.status, code: e.code };
}

console.log(JSON.stringify({
  ids,
  chat: { id: chat.id, content: chat.choices[0].message.content, usage: chat.usage },
  stream: { role, text: streamed, finish, lastChoices: last.choices.length, usage: last.usage },
  notFound,
}));
