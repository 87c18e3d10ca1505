// The /chat page: keeps the conversation in `messages`, sends all of it to /v1/chat/completions with
// stream: true and renders the answer as its server-sent events arrive. No libraries, no external fetches.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "chatpipe-api-key";
const messages = [];   // [{role, content}], what the next request sends
let model = null;      // the served model's name, from /v1/models
let controller = null; // aborts the answer in progress

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function headers() {
  const key = $("key").value.trim();
  return key ? {"Content-Type": "application/json", Authorization: `Bearer ${key}`}
             : {"Content-Type": "application/json"};
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModel() {
  model = null;
  try {
    const response = await fetch("/v1/models", {headers: headers()});
    if (!response.ok) throw new Error(await errorMessage(response));
    model = (await response.json()).data[0].id;
    $("model").textContent = model;
    showError("");
  } catch (e) {
    showError(`cannot reach the model: ${e.message}`);
  }
}

// Request fields from the settings; empty ones are left to the model's defaults.
function settings() {
  const fields = {};
  for (const [id, parse] of [["temperature", parseFloat], ["max_tokens", parseInt], ["seed", parseInt]]) {
    const value = $(id).value.trim();
    if (value !== "") fields[id] = parse(value);
  }
  return fields;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView({block: "end"});
  return div;
}

// The parsed JSON of each `data:` event of a server-sent event stream, until `data: [DONE]`.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send(text) {
  showError("");
  if (!model) await loadModel();
  if (!model) return;
  const question = {role: "user", content: text};
  messages.push(question);
  const questionDiv = bubble("user", text);
  const answerDiv = bubble("assistant", "");
  answerDiv.classList.add("streaming");
  setBusy(true);
  controller = new AbortController();
  let answer = "", failure = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({model, messages, stream: true, ...settings()}),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const chunk of events(response.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices[0]?.delta?.content;
      if (delta) {
        answer += delta;
        answerDiv.append(delta);
        answerDiv.scrollIntoView({block: "end"});
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") failure = e.message;  // Stop keeps what has arrived
  } finally {
    controller = null;
    answerDiv.classList.remove("streaming");
    setBusy(false);
  }
  if (messages.at(-1) !== question) return;  // cleared meanwhile
  if (answer) {
    messages.push({role: "assistant", content: answer});
  } else {  // nothing to keep: the exchange is undone and the text is back in the box to retry
    messages.pop();
    questionDiv.remove();
    answerDiv.remove();
    $("input").value = text;
  }
  if (failure || !answer) showError(failure || "the model gave an empty answer; try again");
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller?.abort());
$("clear").addEventListener("click", () => {
  controller?.abort();
  messages.length = 0;
  $("log").replaceChildren();
  showError("");
});
$("key").value = sessionStorage.getItem(KEY_STORAGE) || "";
$("key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
  loadModel();
});
for (const [name, value] of new URLSearchParams(location.search)) {
  if (["temperature", "max_tokens", "seed"].includes(name)) $(name).value = value;
}
loadModel();
