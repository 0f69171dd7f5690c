// Structured output against lowbit with the official `openai` npm package: the reply follows
// a JSON schema (`response_format: json_schema`; lowbit constrains every token to it, so the
// reply always parses).
//
//   cd client-examples/node && npm ci && node structured.mjs "Describe Alice, 30, who has a cat named Tom."
//
// Prints the parsed object as JSON. LOWBIT_URL, LOWBIT_API_KEY and LOWBIT_MODEL as for chat.mjs.
import OpenAI from "openai";

const baseURL = (process.env.LOWBIT_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "") + "/v1";
const client = new OpenAI({ baseURL, apiKey: process.env.LOWBIT_API_KEY || "none" });
const prompt = process.argv[2] ?? "Describe Alice, 30, who has a cat named Tom.";

let model = process.env.LOWBIT_MODEL;
if (!model) {
  const models = await client.models.list();
  model = models.data[0].id;
}

const person = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 16 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    pets: {
      type: "array",
      maxItems: 3,
      items: {
        type: "object",
        properties: { kind: { enum: ["cat", "dog", "fish"] }, name: { type: "string", maxLength: 16 } },
        required: ["kind", "name"],
        additionalProperties: false,
      },
    },
  },
  required: ["name", "age", "pets"],
  additionalProperties: false,
};

const reply = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: `${prompt} Answer in JSON.` }],
  response_format: { type: "json_schema", json_schema: { name: "person", strict: true, schema: person } },
  temperature: 0,
  max_tokens: 200,
});
const choice = reply.choices[0];
if (choice.finish_reason !== "stop") {
  console.error(`incomplete reply (finish_reason ${choice.finish_reason}): ${choice.message.content}`);
  process.exit(1);
}
console.log(JSON.stringify(JSON.parse(choice.message.content)));
