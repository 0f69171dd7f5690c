// A two-turn conversation through OpenAI's Responses API with the official `openai` npm
// package: the first answer whole, the second streamed, the server keeping the conversation
// (`previous_response_id`), so the second request sends only the new question.
//
//   cd client-examples/node && npm ci && node responses.mjs "What is 2+2?" "And 3+3?"
//
// LOWBIT_URL, LOWBIT_API_KEY and LOWBIT_MODEL as in chat.mjs. Prints each answer on its own line.
import OpenAI from "openai";

const baseURL = (process.env.LOWBIT_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "") + "/v1";
const client = new OpenAI({ baseURL, apiKey: process.env.LOWBIT_API_KEY || "none" });
const first = process.argv[2] ?? "What is 2+2?";
const second = process.argv[3] ?? "And 3+3?";

let model = process.env.LOWBIT_MODEL;
if (!model) {
  const models = await client.models.list();
  model = models.data[0].id;
}

const oneLine = (s) => s.replaceAll("\n", " ");
const r = await client.responses.create({ model, input: first, temperature: 0, max_output_tokens: 24 });
process.stdout.write(oneLine(r.output_text) + "\n");

const stream = await client.responses.create({
  model,
  input: second,
  previous_response_id: r.id,
  temperature: 0,
  max_output_tokens: 24,
  stream: true,
});
for await (const event of stream) {
  if (event.type === "response.output_text.delta") process.stdout.write(oneLine(event.delta));
}
process.stdout.write("\n");
