// The Vercel AI SDK through cortex: generateText and streamText with the OpenAI provider over
// the Responses API (`openai(model)`, its default) and Chat Completions (`openai.chat(model)`),
// and with the Anthropic provider (Messages). Driven by tests/clients/test_vercel_ai.py:
//   node vercel.mjs BASE_URL API_KEY CASES_JSON
// CASES_JSON is a list of {provider: "responses"|"chat"|"anthropic", model, mode: "generate"|
// "stream", maxOutputTokens}; prints one JSON list with, per case, the text, the finish reasons,
// the usage and any error the SDK raised or reported (an error is a result, not a crash).
import { generateText, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createAnthropic } from "@ai-sdk/anthropic";

const [baseURL, apiKey, casesJson] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: `${baseURL}/v1`, apiKey });
const anthropic = createAnthropic({ baseURL: `${baseURL}/v1`, apiKey });

function model(provider, id) {
  switch (provider) {
    case "responses":
      return openai(id);
    case "chat":
      return openai.chat(id);
    case "anthropic":
      return anthropic(id);
    default:
      throw new Error(`unknown provider ${provider}`);
  }
}

const PROMPT = "Count from one to one hundred in words, one number per line.";

async function run(c) {
  const settings = { model: model(c.provider, c.model), prompt: PROMPT, maxOutputTokens: c.maxOutputTokens, maxRetries: 0 };
  if (c.mode === "generate") {
    const result = await generateText(settings);
    return { text: result.text, finishReason: result.finishReason, rawFinishReason: result.rawFinishReason, usage: result.usage };
  }
  const errors = [];
  const result = streamText({ ...settings, onError: ({ error }) => errors.push(String(error?.stack ?? error)) });
  let text = "";
  let parts = 0;
  for await (const delta of result.textStream) {
    text += delta;
    parts += 1;
  }
  return {
    text,
    parts,
    finishReason: await result.finishReason,
    rawFinishReason: await result.rawFinishReason,
    usage: await result.totalUsage,
    errors,
  };
}

const results = [];
for (const c of JSON.parse(casesJson)) {
  try {
    results.push({ case: c, ...(await run(c)) });
  } catch (error) {
    results.push({ case: c, errors: [String(error?.stack ?? error)] });
  }
}
console.log(JSON.stringify(results));
