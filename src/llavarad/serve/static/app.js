// The drafting page: pick or drop an image, preview it (rendered by the server, so DICOM works),
// draft, then edit, copy or download the draft; hover or click a word to overlay its heat map.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { file: null, base: null, words: [], pinned: -1 };
  const VALUE = { "1": ["present", "v-pos"], "0": ["absent", "v-neg"], "-1": ["uncertain", "v-unc"] };

  function headers() {
    const key = $("apikey").value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }
  function status(text) { $("status").textContent = text; }

  async function post(path, form) {
    let res;
    try {
      res = await fetch(path, { method: "POST", body: form, headers: headers() });
    } catch (e) {
      throw new Error("The server could not be reached (" + e.message + ").");
    }
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      if (res.status === 401) $("keybox").open = true;
      const msg = body && body.error ? body.error.message : "HTTP " + res.status;
      throw new Error("Rejected: " + msg);
    }
    return body;
  }

  async function choose(file) {
    state.file = null; $("go").disabled = true; $("result").hidden = true; showError("");
    if (!file) return;
    status("Reading " + file.name + " ...");
    const form = new FormData();
    form.append("image", file);
    try {
      const p = await post("/v1/preview", form);
      state.file = file; state.base = p.image;
      $("view").src = p.image; $("figure").hidden = false;
      $("caption").textContent = p.source_format.toUpperCase() + " · " + p.width + " × " + p.height +
        (p.view ? " · view " + p.view : "");
      $("go").disabled = false;
      status("Ready to draft.");
    } catch (e) {
      $("figure").hidden = true; status(""); showError(e.message);
    }
  }

  function overlayWord(i) {
    document.querySelectorAll("#words .w").forEach((el) => el.classList.toggle("on", Number(el.dataset.i) === i));
    $("view").src = i >= 0 ? state.words[i].overlay : state.base;
    $("caption").dataset.word = i >= 0 ? state.words[i].text : "";
  }

  function renderWords(text, words) {
    const box = $("words");
    box.textContent = "";
    let cursor = 0;
    words.forEach((w, i) => {
      box.appendChild(document.createTextNode(text.slice(cursor, w.start)));
      const span = document.createElement("span");
      span.className = "w"; span.dataset.i = String(i); span.textContent = text.slice(w.start, w.end);
      span.addEventListener("mouseenter", () => overlayWord(i));
      span.addEventListener("mouseleave", () => overlayWord(state.pinned));
      span.addEventListener("click", () => { state.pinned = state.pinned === i ? -1 : i; overlayWord(state.pinned); });
      box.appendChild(span);
      cursor = w.end;
    });
    box.appendChild(document.createTextNode(text.slice(cursor)));
  }

  function renderLabels(labels) {
    const table = $("labels");
    table.textContent = "";
    Object.entries(labels).forEach(([name, value]) => {
      const [word, cls] = value === null ? ["not mentioned", "v-none"] : VALUE[String(value)] || [String(value), ""];
      const row = table.insertRow();
      row.insertCell().textContent = name;
      const cell = row.insertCell();
      cell.textContent = word; cell.className = cls;
    });
  }

  function renderWarnings(warnings) {
    const box = $("warnings");
    box.textContent = "";
    warnings.forEach((w) => {
      const div = document.createElement("div");
      div.className = "warn";
      div.textContent = "⚠ " + w.message + (w.sentence ? ": “" + w.sentence + "”" : "");
      box.appendChild(div);
    });
  }

  async function draft() {
    if (!state.file) return;
    showError(""); $("go").disabled = true; status("Drafting ...");
    const form = new FormData();
    form.append("image", state.file);
    form.append("indication", $("indication").value);
    form.append("explain", "true");
    try {
      const r = await post("/v1/reports", form);
      state.words = r.words || []; state.pinned = -1;
      renderWords(r.findings, state.words);
      renderWarnings(r.warnings);
      renderLabels(r.labels);
      $("draft").value = r.findings;
      $("meta").textContent = "model " + r.model.id + " · " + Math.round(r.timings.total_ms) + " ms · request " + r.id;
      $("result").hidden = false;
      status("Draft ready: check and edit it before use.");
    } catch (e) {
      status(""); showError(e.message);
    } finally {
      $("go").disabled = !state.file;
    }
  }

  async function copyDraft() {
    const text = $("draft").value;
    try { await navigator.clipboard.writeText(text); } catch (e) { $("draft").select(); document.execCommand("copy"); }
    $("copied").textContent = "Copied.";
    setTimeout(() => { $("copied").textContent = ""; }, 1500);
  }

  function downloadDraft() {
    const url = URL.createObjectURL(new Blob([$("draft").value + "\n"], { type: "text/plain" }));
    const a = document.createElement("a");
    a.href = url; a.download = "draft-findings.txt";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  $("go").addEventListener("click", draft);
  $("copy").addEventListener("click", copyDraft);
  $("download").addEventListener("click", downloadDraft);
})();
