// Streaming chat against lowbit with the official `openai` npm package.
//
//   cd client-examples/node && npm ci && node chat.mjs "What is 2+2?"
//
// LOWBIT_URL (default http://127.0.0.1:8000), LOWBIT_API_KEY (if the server has --api-key) and
// LOWBIT_MODEL (default: the first model that /v1/models lists) pick the server and the model.
import OpenAI from "openai";

const baseURL = (process.env.LOWBIT_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "") + "/v1";
const client = new OpenAI({ baseURL, apiKey: process.env.LOWBIT_API_KEY || "none" });
const prompt = process.argv[2] ?? "What is 2+2?";

let model = process.env.LOWBIT_MODEL;
if (!model) {
  const models = await client.models.list();
  model = models.data[0].id;
}

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: prompt }],
  temperature: 0,
  stream: true,
});
for await (const chunk of stream) {
  const content = chunk.choices[0]?.delta?.content;
  if (content) process.stdout.write(content);
}
process.stdout.write("\n");
