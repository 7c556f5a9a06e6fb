"""The web page at /: plain HTML and JavaScript over the same /v1/videos API the SDK uses (no
build step, nothing fetched from elsewhere). Videos are fetched with the API key and played from
blob URLs, so the page works when the server takes keys."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>videodit</title>
<style>
  :root { --fg: #1d1f23; --muted: #6b7079; --line: #d9dce1; --accent: #2f6fde; --bad: #c62828; }
  * { box-sizing: border-box; }
  body { font: 15px/1.4 system-ui, sans-serif; color: var(--fg); margin: 0 auto; max-width: 980px; padding: 20px; }
  h1 { font-size: 22px; margin: 0 0 4px; } .sub { color: var(--muted); margin: 0 0 16px; }
  form { display: grid; grid-template-columns: 1fr 1fr 1fr 1fr; gap: 10px; align-items: end;
         border: 1px solid var(--line); border-radius: 8px; padding: 14px; }
  label { display: flex; flex-direction: column; font-size: 13px; color: var(--muted); gap: 4px; }
  textarea, input { font: inherit; padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px; }
  textarea { grid-column: 1 / -1; min-height: 56px; resize: vertical; }
  button { font: inherit; padding: 7px 14px; border-radius: 6px; border: 1px solid var(--accent);
           background: var(--accent); color: white; cursor: pointer; }
  button.small { padding: 3px 9px; font-size: 13px; background: white; color: var(--accent); }
  button.small.danger { color: var(--bad); border-color: var(--bad); }
  #status { grid-column: 1 / -1; min-height: 20px; font-size: 14px; }
  #status.error { color: var(--bad); }
  progress { width: 100%; height: 10px; }
  #stage { display: flex; gap: 16px; align-items: flex-start; margin: 16px 0; }
  #player { width: 320px; height: 320px; background: #111; border-radius: 8px; image-rendering: pixelated; }
  #gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
  .card { border: 1px solid var(--line); border-radius: 8px; padding: 8px; font-size: 13px; }
  .card video { width: 100%; aspect-ratio: 1; background: #111; border-radius: 6px; image-rendering: pixelated; }
  .card .prompt { margin: 6px 0; overflow-wrap: anywhere; } .card .meta { color: var(--muted); }
  .card .actions { display: flex; gap: 6px; margin-top: 6px; flex-wrap: wrap; }
  .card.failed { border-color: var(--bad); } .card .err { color: var(--bad); }
</style>
</head>
<body>
<h1>videodit</h1>
<p class="sub">Text to video on this machine. The same API answers the <code>openai</code> SDK at <code>/v1</code>.</p>
<form id="create">
  <textarea id="prompt" placeholder="A red ball bounces on a black background." required></textarea>
  <label>Size (WxH) <input id="size" placeholder="model default"></label>
  <label>Duration (seconds) <input id="seconds" placeholder="model default"></label>
  <label>Image to animate <input id="image" type="file" accept="image/*"></label>
  <label>API key <input id="key" type="password" placeholder="if the server needs one"></label>
  <div id="status"></div>
  <div style="grid-column: 1 / -1; display: flex; gap: 10px; align-items: center;">
    <button id="go" type="submit">Generate</button>
    <progress id="bar" max="100" value="0"></progress>
  </div>
</form>
<div id="stage"><video id="player" controls loop muted playsinline></video>
  <div><div id="now" class="sub">Nothing playing yet.</div></div></div>
<h2 style="font-size:17px">Gallery</h2>
<div id="gallery"></div>
<script>
const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = localStorage.getItem("videodit-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("videodit-key", keyInput.value); refresh(); });
const blobs = {};  // video id -> blob URL of its mp4
let current = null;  // the id the progress bar follows

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}
async function api(path, options) {
  options = options || {};
  const r = await fetch("/v1" + path, Object.assign({}, options, { headers: headers(options.headers) }));
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : await r.blob();
  if (!r.ok) throw new Error(body.error ? body.error.message : ("HTTP " + r.status));
  return body;
}
function say(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : ""; }

async function videoUrl(id) {
  if (!blobs[id]) blobs[id] = URL.createObjectURL(await api("/videos/" + id + "/content"));
  return blobs[id];
}
async function play(video) {
  const player = $("player");
  player.src = await videoUrl(video.id);
  player.dataset.id = video.id;
  await player.play().catch(() => {});
  $("now").textContent = video.prompt + " (" + video.size + ", " + video.seconds + " s)";
}

async function submit(path, body) {
  try {
    const options = body instanceof FormData ? { method: "POST", body }
      : { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
    const video = await api(path, options);
    current = video.id;
    $("bar").value = 0;
    say("Queued " + video.id);
    refresh();
  } catch (e) { say(e.message, true); }
}

$("create").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  if ($("size").value.trim()) form.append("size", $("size").value.trim());
  if ($("seconds").value.trim()) form.append("seconds", $("seconds").value.trim());
  if ($("image").files[0]) form.append("input_reference", $("image").files[0]);
  submit("/videos", form);
});

function card(video) {
  const div = document.createElement("div");
  div.className = "card " + video.status;
  div.dataset.id = video.id;
  div.dataset.status = video.status;
  const done = video.status === "completed";
  div.innerHTML = (done ? "<video muted loop playsinline></video>" : "<progress max='100'></progress>") +
    "<div class='prompt'></div><div class='meta'></div><div class='err'></div><div class='actions'></div>";
  div.querySelector(".prompt").textContent = video.prompt;
  div.querySelector(".meta").textContent = video.size + " · " + video.seconds + " s · " + video.mode +
    (done ? "" : " · " + video.status + " " + video.progress + "%");
  if (video.error) div.querySelector(".err").textContent = video.error.message;
  if (!done) div.querySelector("progress").value = video.progress;
  const actions = div.querySelector(".actions");
  const button = (label, cls, action) => {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.className = "small " + (cls || ""); b.onclick = action;
    actions.appendChild(b);
  };
  if (done) {
    videoUrl(video.id).then((url) => { const v = div.querySelector("video"); v.src = url; v.play().catch(() => {}); });
    div.querySelector("video").onclick = () => play(video);
    button("Play", "", () => play(video));
    button("Remix", "", () => submit("/videos/" + video.id + "/remix", { prompt: $("prompt").value || video.prompt }));
    button("Extend", "", () => submit("/videos/extensions", { prompt: $("prompt").value || video.prompt,
      seconds: $("seconds").value.trim() || "1", video: { id: video.id } }));
  }
  button("Delete", "danger", async () => {
    try { await api("/videos/" + video.id, { method: "DELETE" }); } catch (e) { say(e.message, true); }
    refresh();
  });
  return div;
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  let list;
  try { list = await api("/videos?limit=100"); } catch (e) { say(e.message, true); return; }
  const gallery = $("gallery");
  const shown = {};
  for (const el of gallery.children) shown[el.dataset.id] = el;
  const fresh = [];
  for (const video of list.data) {
    const old = shown[video.id];
    const same = old && old.dataset.status === "completed" && video.status === "completed";
    fresh.push(same ? old : card(video));
    if (video.id === current) {
      $("bar").value = video.progress;
      if (video.status === "completed") { say("Done: " + video.id); current = null; play(video); }
      else if (video.status === "failed") { say(video.error ? video.error.message : "failed", true); current = null; }
      else say(video.status.replace("_", " ") + " " + video.progress + "%");
    }
  }
  gallery.replaceChildren(...fresh);
  if (list.data.some((v) => v.status === "queued" || v.status === "in_progress")) timer = setTimeout(refresh, 500);
}
refresh();
</script>
</body>
</html>
"""
