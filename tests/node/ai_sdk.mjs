// Drives a running ClosedMesh node with the Vercel AI SDK (`ai` + `@ai-sdk/openai-compatible`): generateText
// with a tool the model must call (executed here, its result fed back for a final answer), and streamText
// with the same tool. Usage: node ai_sdk.mjs <baseURL> <model>. Prints one JSON line with what it observed;
// exits non-zero on any failure (the SDK throws on a malformed answer or tool call).
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";

const [baseURL, model] = process.argv.slice(2);
const provider = createOpenAICompatible({ name: "closedmesh", baseURL, apiKey: "anything", includeUsage: true });

const executed = [];
const weather = tool({
  description: "Get the current weather in a city",
  inputSchema: jsonSchema({
    type: "object",
    properties: { city: { type: "string" }, unit: { type: "string", enum: ["c", "f"] } },
    required: ["city", "unit"],
    additionalProperties: false,
  }),
  execute: async ({ city, unit }) => {
    executed.push({ city, unit });
    return { city, unit, temperature: 21 };
  },
});

// Step 1 must call the tool (toolChoice "required"); step 2 answers with its result in the history.
const gen = await generateText({
  model: provider(model),
  tools: { get_weather: weather },
  prompt: "What is the weather in Paris?",
  maxOutputTokens: 96,
  temperature: 0,
  maxRetries: 0,
  stopWhen: stepCountIs(2),
  prepareStep: ({ stepNumber }) => (stepNumber === 0 ? { toolChoice: "required" } : { toolChoice: "none" }),
});

const streamed = streamText({
  model: provider(model),
  tools: { get_weather: weather },
  toolChoice: { type: "tool", toolName: "get_weather" },
  prompt: "And in Berlin?",
  maxOutputTokens: 96,
  temperature: 0,
  maxRetries: 0,
});
const parts = [];
for await (const part of streamed.fullStream) {
  if (part.type === "error") throw part.error;
  parts.push(part.type);
}
const streamCalls = await streamed.toolCalls;
const streamUsage = await streamed.usage;

console.log(JSON.stringify({
  steps: gen.steps.length,
  firstStepCalls: gen.steps[0].toolCalls.map((c) => ({ name: c.toolName, input: c.input })),
  firstStepFinish: gen.steps[0].finishReason,
  finalText: gen.text,
  finalFinish: gen.finishReason,
  executed,
  streamParts: [...new Set(parts)],
  streamCalls: streamCalls.map((c) => ({ name: c.toolName, input: c.input })),
  streamOutputTokens: streamUsage.outputTokens,
}));
