// Vitrine's demo page: plain JavaScript over the gateway's HTTP/JSON API (see /openapi.json).
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "vitrine.apiKey";
const DEMO_USER = "u00000"; // the first shopper of the demo history `vitrine up` records
let photo = null; // the File chosen or dropped
let searchSeq = 0; // answers to superseded searches are dropped
let similarSeq = 0;
const seenCategories = new Set();
const seenBrands = new Set();

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

// One way to call the API: JSON back, or an Error carrying the gateway's own message and code.
async function call(url, options = {}) {
  let res;
  try {
    res = await fetch(url, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (err) {
    throw new Error(`The gateway could not be reached (${err.message}).`);
  }
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  if (!res.ok) {
    const e = body && body.error;
    throw new Error(e ? `${e.message} (${e.code}, HTTP ${res.status})` : `The gateway answered HTTP ${res.status}.`);
  }
  return body;
}

// data-state and data-done (the number of the last finished search) let tests and scripts wait on the page.
function setState(state, seq) {
  const main = $("#main");
  main.dataset.state = state;
  if (seq !== undefined) main.dataset.done = String(seq);
}

function showError(message) {
  const el = $("#error");
  el.textContent = message;
  el.hidden = !message;
}

function filters() {
  const out = [];
  const category = $("#category").value.trim();
  const brand = $("#brand").value.trim();
  const min = $("#price-min").value;
  const max = $("#price-max").value;
  if (category) out.push({ field: "category", any_of: [category] });
  if (brand) out.push({ field: "brand", any_of: [brand] });
  if (min !== "" || max !== "") {
    const f = { field: "price" };
    if (min !== "") f.min = Number(min);
    if (max !== "") f.max = Number(max);
    out.push(f);
  }
  return out;
}

function timingsText(timings) {
  return timings.map((t) => `${t.stage} ${t.ms.toFixed(1)} ms`).join(" · ");
}

// Images need the API key when one is set; an <img src> cannot send it, so fetch and show a blob.
function loadImage(img, url) {
  if (!apiKey()) {
    img.src = url;
    return;
  }
  fetch(url, { headers: authHeaders() })
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
    .then((blob) => {
      img.src = URL.createObjectURL(blob);
    })
    .catch(() => {
      img.alt = "image unavailable";
    });
}

function remember(product) {
  product.category.forEach((c) => seenCategories.add(c));
  if (product.brand) seenBrands.add(product.brand);
}

function refreshChoices() {
  const fill = (id, values) => {
    const list = $(id);
    list.replaceChildren(
      ...[...values].sort().map((v) => {
        const o = document.createElement("option");
        o.value = v;
        return o;
      }),
    );
  };
  fill("#categories", seenCategories);
  fill("#brands", seenBrands);
}

function card(hit) {
  const p = hit.product;
  const node = $("#card").content.firstElementChild.cloneNode(true);
  node.dataset.id = p.id;
  node.dataset.category = p.category.join(" > ");
  node.dataset.brand = p.brand;
  node.dataset.price = String(p.price);
  const img = node.querySelector("img");
  img.alt = p.title;
  loadImage(img, p.image_url);
  node.querySelector(".title").textContent = p.title;
  node.querySelector(".price").textContent = p.price.toFixed(2);
  node.querySelector(".brand").textContent = [p.brand, p.category[p.category.length - 1]].filter(Boolean).join(" · ");
  const scores = [`retrieval ${hit.retrieval_score.toFixed(3)}`];
  if (hit.rerank_score !== null && hit.rerank_score !== undefined) scores.push(`rerank ${hit.rerank_score.toFixed(2)}`);
  node.querySelector(".scores").textContent = scores.join(" · ");
  node.title = p.description || p.title;
  const open = () => showSimilar(p);
  node.addEventListener("click", open);
  node.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") open();
  });
  remember(p);
  return node;
}

async function search(ev) {
  if (ev) ev.preventDefault();
  const seq = ++searchSeq;
  const text = $("#q").value;
  const topK = Number($("#top-k").value) || 24;
  const common = {
    text,
    top_k: topK,
    rerank: $("#rerank").checked,
  };
  let request;
  if (photo) {
    const form = new FormData();
    form.append("image", photo, photo.name || "photo");
    form.append("text", text);
    form.append("top_k", String(topK));
    form.append("rerank", String(common.rerank));
    form.append("image_weight", $("#weight").value);
    form.append("filters", JSON.stringify(filters()));
    request = call("/v1/search/upload", { method: "POST", body: form });
  } else {
    request = call("/v1/search", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...common, filters: filters() }),
    });
  }
  setState("loading");
  $("#status").textContent = "Searching…";
  try {
    const res = await request;
    if (seq !== searchSeq) return;
    showError("");
    $("#results").replaceChildren(...res.hits.map(card));
    refreshChoices();
    const notes = [];
    if (res.reranked) notes.push("re-ranked");
    if (res.text_truncated) notes.push("query text was cut to the model's length");
    $("#status").textContent =
      `${res.hits.length} result${res.hits.length === 1 ? "" : "s"}` +
      (notes.length ? ` (${notes.join(", ")})` : "") +
      ` · ${timingsText(res.timings)}`;
    setState("done", seq);
  } catch (err) {
    if (seq !== searchSeq) return;
    showError(err.message);
    $("#status").textContent = "";
    setState("error", seq);
  }
}

async function showSimilar(product) {
  const seq = ++similarSeq;
  const panel = $("#similar");
  panel.hidden = false;
  panel.dataset.state = "loading";
  $("#similar-title").textContent = product.title;
  $("#similar-status").textContent = "Looking…";
  try {
    const res = await call(`/v1/products/${encodeURIComponent(product.id)}/similar`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ top_k: 12 }),
    });
    if (seq !== similarSeq) return;
    showError("");
    $("#similar-image").replaceChildren(...res.by_image.map(card));
    $("#similar-title-list").replaceChildren(...res.by_title.map(card));
    $("#similar-status").textContent = timingsText(res.timings);
    panel.dataset.state = "done";
    panel.dataset.done = String(seq);
  } catch (err) {
    if (seq !== similarSeq) return;
    $("#similar-status").textContent = "";
    panel.dataset.state = "error";
    panel.dataset.done = String(seq);
    showError(err.message);
  }
}

function setPhoto(file) {
  photo = file || null;
  const chip = $("#photo-chip");
  const prev = $("#preview");
  if (prev.src) URL.revokeObjectURL(prev.src);
  if (photo) {
    prev.src = URL.createObjectURL(photo);
    $("#photo-name").textContent = photo.name || "photo";
  } else {
    prev.removeAttribute("src");
    $("#photo").value = "";
  }
  chip.hidden = !photo;
  $("#drop-hint").hidden = Boolean(photo);
}

// The "recommended for you" row appears only once the gateway serves recommendations.
async function recommendations() {
  try {
    const doc = await call("/openapi.json");
    if (!doc.paths || !doc.paths["/v1/recommendations"]) return;
    const user = $("#rec-user").value || DEMO_USER;
    const res = await call(`/v1/recommendations?user_id=${encodeURIComponent(user)}&top_k=12`);
    const hits = res.hits || [];
    if (!hits.length) return;
    $("#recs-list").replaceChildren(
      ...hits.map((hit) => {
        const node = card(hit);
        node.querySelector(".scores").textContent = hit.reason;
        return node;
      }),
    );
    $("#rec-strategy").textContent = res.strategy === "personal" ? "" : `(${res.strategy})`;
    $("#recs").hidden = false;
  } catch (_) {
    // optional row: the page works without it
  }
}

// The re-rank switch starts as the gateway advises: on only when the served cross-encoder was trained for
// relevance (an untrained head scrambles the results); the note says why it starts off.
async function rerankDefault() {
  const box = $("#rerank");
  try {
    const s = await call("/v1/serving");
    box.checked = Boolean(s.rerank_by_default);
    $("#rerank-label").title = s.reason;
    $("#rerank-note").textContent = s.rerank_by_default ? "" : `off by default: ${s.reason.split(":")[0]}`;
  } catch (_) {
    box.checked = false; // unknown: never re-rank by default
  }
  box.dataset.advised = "1";
}

// How many products the catalog holds: `vitrine up` serves from its first stored batch while the rest is
// ingested, so the header says "indexing" while the count grows, and stops asking once it holds still.
const CATALOG_POLL_MS = 2000;
const CATALOG_STILL_POLLS = 5;

async function catalogSize(last = -1, still = 0, grew = false) {
  let products;
  try {
    products = (await call("/v1/catalog")).products;
  } catch (_) {
    return; // optional line: the page works without it
  }
  const changed = last >= 0 && products !== last;
  still = changed ? 0 : still + 1;
  grew = grew || changed;
  $("#catalog-size").textContent = grew && still < 3 ? `indexing: ${products} products` : `${products} products`;
  if (still < CATALOG_STILL_POLLS) setTimeout(() => catalogSize(products, still, grew), CATALOG_POLL_MS);
}

function init() {
  $("#search").addEventListener("submit", search);
  $("#photo").addEventListener("change", (ev) => setPhoto(ev.target.files[0]));
  $("#photo-clear").addEventListener("click", () => setPhoto(null));
  $("#weight").addEventListener("input", (ev) => {
    $("#weight-out").textContent = Number(ev.target.value).toFixed(2);
  });
  $("#similar-close").addEventListener("click", () => {
    $("#similar").hidden = true;
  });
  const key = $("#api-key");
  key.value = apiKey();
  key.addEventListener("change", () => sessionStorage.setItem(KEY_STORE, key.value.trim()));
  const drop = document.body;
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    $("#drop").classList.add("over");
  });
  drop.addEventListener("dragleave", () => $("#drop").classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    $("#drop").classList.remove("over");
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (file) setPhoto(file);
  });
  $("#rec-user").addEventListener("change", recommendations);
  recommendations();
  rerankDefault();
  catalogSize();
  $("#q").focus();
}

init();
