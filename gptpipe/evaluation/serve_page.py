"""The chat page `gptpipe serve` shows at `/`: one file, no scripts from elsewhere (works offline).

It keeps the conversation in the page and posts it whole to /v1/chat/completions with
`stream: true`, appending each server-sent delta to the answer as it arrives.
"""

import html
import json

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>gptpipe: {model}</title>
<style>
body { font-family: sans-serif; max-width: 46em; margin: 2em auto; }
#log p { white-space: pre-wrap; } .user { color: #124; } .assistant { color: #241; }
form { display: flex; gap: .5em; } #message { flex: 1; }
</style></head>
<body>
<h1>{model}</h1>
<div id="log"></div>
<form id="form"><input id="message" autocomplete="off" placeholder="Ask something">
<button id="send">Send</button> <button type="button" id="reset">New chat</button></form>
<script>
const messages = [];
const log = document.getElementById("log");
function line(role, text) {
  const p = document.createElement("p"); p.className = role; p.textContent = text;
  log.appendChild(p); return p;
}
document.getElementById("reset").onclick = () => { messages.length = 0; log.textContent = ""; };
document.getElementById("form").onsubmit = async (e) => {
  e.preventDefault();
  const box = document.getElementById("message"), text = box.value.trim();
  if (!text) return;
  box.value = ""; messages.push({role: "user", content: text}); line("user", "you: " + text);
  const out = line("assistant", ""), reply = [];
  const res = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model: {model_json}, messages: messages, stream: true})});
  if (!res.ok) {
    const error = await res.json().catch(() => ({error: {message: res.status + " " + res.statusText}}));
    out.textContent = "error: " + error.error.message; messages.pop(); return;
  }
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let at;
    while ((at = buffer.indexOf("\\n\\n")) >= 0) {
      const data = buffer.slice(0, at).replace(/^data: /, ""); buffer = buffer.slice(at + 2);
      if (data === "[DONE]") continue;
      const event = JSON.parse(data);
      if (event.error) { out.textContent = "error: " + event.error.message; messages.pop(); return; }
      const delta = event.choices[0].delta.content;
      if (delta) { reply.push(delta); out.textContent = reply.join(""); }
    }
  }
  out.dataset.done = "1";
  messages.push({role: "assistant", content: reply.join("")});
};
</script>
</body></html>
"""


def page_for(name: str) -> str:
    """The page for the served model id: the id is the user's (`--name`), so it is HTML-escaped in the
    page and JSON-encoded in the script, with "</" broken so that it cannot close the script."""
    return PAGE.replace("{model_json}", json.dumps(name).replace("</", "<\\/")).replace("{model}", html.escape(name))
