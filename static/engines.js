// Engines: the few lines that make the page behave like a desktop app. Every
// form works without them; they keep the focus where the work goes on, save a
// thrust without a page load, show changes made elsewhere, and answer a few keys.
"use strict";

const FOCUS_AFTER = "engines-focus-after";  // sessionStorage: where the next page puts the focus
const POLL_MS = 1000;  // how often the list asks whether anything changed (a 304 while nothing did)

document.addEventListener("DOMContentLoaded", () => {
  // After the load: going to a #fragment (a new engine's row) would take the focus away again.
  addEventListener("load", () => setTimeout(placeFocus));
  announceMessages();
  document.addEventListener("submit", rememberFocus, true);
  document.addEventListener("click", rememberLinkFocus, true);
  document.addEventListener("keydown", shortcut);
  for (const button of document.querySelectorAll("[data-shortcuts]")) {
    button.addEventListener("click", showShortcuts);
  }
  document.addEventListener("submit", (event) => {
    if (event.target.classList.contains("quick-thrust")) {
      event.preventDefault();
      setThrust(event.target);
    }
  });
  document.getElementById("rows")?.addEventListener("input", (event) => clearNote(event.target.form));
  if (document.getElementById("list-body")) startLive();
});

// -- Focus: where the work goes on ---------------------------------------------

// A form may say where the focus goes on the page it leads to (data-focus-after:
// selectors, the first found wins, "||" between them); a pager link or a column
// header followed with the keyboard keeps it on the same link.
function rememberFocus(event) {
  const target = event.target.dataset.focusAfter;
  if (target && !event.defaultPrevented) sessionStorage.setItem(FOCUS_AFTER, target);
}

function rememberLinkFocus(event) {
  const link = event.target.closest("a[data-keep-focus]");
  if (!link || event.detail !== 0) return;
  // A pager link gone from the next page (no next page after it) leaves the focus in the same pager.
  const pager = link.closest("nav");
  sessionStorage.setItem(FOCUS_AFTER, "#" + link.id + (pager ? `||#${pager.id} a` : ""));
}

function placeFocus() {
  const wanted = sessionStorage.getItem(FOCUS_AFTER);
  sessionStorage.removeItem(FOCUS_AFTER);
  if (document.querySelector("[autofocus]")) return;  // the server chose: a bad field, a choice
  for (const selector of (wanted || "").split("||")) {
    const target = selector && document.querySelector(selector);
    if (target) {
      target.focus({ preventScroll: Boolean(location.hash) });  // the new engine's row stays in view
      return;
    }
  }
}

// Messages the server put on the page are spoken once it has loaded (a live
// region announces changes, not what a page starts with).
function announceMessages() {
  const messages = document.getElementById("messages");
  if (messages) {
    // What the messages say, not the label of an Undo button beside one.
    const text = [...messages.querySelectorAll(".message")].map((m) => m.textContent).join(" ")
      .replace(/\s+/g, " ").trim();
    const urgent = messages.querySelector(".error") !== null;
    setTimeout(() => say(text, urgent), 200);
  }
}

function say(text, urgent = false) {
  const region = document.getElementById(urgent ? "alert" : "live");
  region.textContent = "";
  requestAnimationFrame(() => { region.textContent = text; });
}

// A message at the top of the page, as the server would have shown it; `undo`
// (a change's record) adds its Undo button: a copy of the page's <template id="undo-message">.
function showMessage(text, urgent, undo = null, spoken = true) {
  let messages = document.getElementById("messages");
  if (!messages) {
    messages = document.createElement("div");
    messages.id = "messages";
    messages.className = "messages";
    messages.tabIndex = -1;
    document.getElementById("main").prepend(messages);
  }
  const message = document.createElement("p");
  message.className = urgent ? "message error" : "message success";
  message.textContent = text;
  messages.replaceChildren(undo ? undoable(message, undo) : message);
  if (spoken) say(text, urgent);
}

function undoable(message, record) {
  const flash = document.getElementById("undo-message").content.firstElementChild.cloneNode(true);
  flash.querySelector(".message").replaceWith(message);
  flash.querySelector("input[name=change]").value = record;
  return flash;
}

// -- Keys ------------------------------------------------------------------------

function shortcut(event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  const field = event.target.closest("input, textarea, select, [contenteditable]");
  if (field) {
    if (event.key === "Escape" && field.form?.classList.contains("quick-thrust")) {
      field.value = field.defaultValue;
      clearNote(field.form);
    }
    return;
  }
  if (document.querySelector("dialog[open]")) return;
  const go = { "/": "#q", "n": "#title" }[event.key];
  if (go) {
    event.preventDefault();
    const target = document.querySelector(go);
    if (target) {
      target.focus();
      target.select();
    } else {  // another page: the list has the search and the new engine
      sessionStorage.setItem(FOCUS_AFTER, go);
      location.href = document.querySelector(".brand a, a.brand").href;
    }
  } else if (event.key === "?") {
    event.preventDefault();
    showShortcuts();
  }
}

function showShortcuts() {
  const dialog = document.getElementById("shortcuts"), before = document.activeElement;
  dialog.addEventListener("close", () => before?.focus(), { once: true });  // back where it was
  dialog.showModal();
}

// -- A thrust set from its row -------------------------------------------------------

async function setThrust(form) {
  const title = form.closest("tr").querySelector(".title").textContent.trim();
  let response, body;
  try {
    response = await fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "Accept": "application/json" },
    });
    body = await response.json();
  } catch (e) {
    showNote(form, "Engines is not answering; is it still running?", true);
    return;
  }
  if (!response.ok) {
    showNote(form, (body.fields && body.fields.thrust) || body.error || `Error ${response.status}`, true);
    return;
  }
  const input = form.elements.thrust;
  input.value = input.defaultValue = body.shown;
  showNote(form, "Saved", false, `Saved: ${title}, thrust ${body.shown}.`);
  if (body.undo) showMessage(body.message, false, body.undo, false);  // Undo at the top, as after any change
  poll();  // the gauges of every row, and the row's place in its order
}

// The note beside a thrust box: "Saved" for a moment, or an error until the box is changed.
function showNote(form, text, isError, spoken = text) {
  const input = form.elements.thrust;
  clearNote(form);
  const note = document.createElement("span");
  note.className = isError ? "note error" : "note";
  note.id = input.id + "-note";
  note.textContent = text;
  form.append(note);
  if (isError) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", note.id);
  } else {
    note.timer = setTimeout(() => note.remove(), 3000);
  }
  say(spoken, isError);
}

function clearNote(form) {
  if (!form || !form.classList.contains("quick-thrust")) return;
  form.querySelector(".note")?.remove();
  form.elements.thrust.removeAttribute("aria-invalid");
  form.elements.thrust.removeAttribute("aria-describedby");
}

// -- Live: changes made elsewhere appear without a reload ---------------------------------
// The page asks /api/state with the tag it was made at; a 304 costs the server
// no read of any engine. When the tag changed, it fetches its list again (/list)
// and changes only what differs, never a box being typed in.

let liveTimer = null;

function startLive() {
  liveTimer = setTimeout(poll, POLL_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
}

async function poll() {
  clearTimeout(liveTimer);
  const body = document.getElementById("list-body");
  if (!document.hidden && body) {
    try {
      const response = await fetch(body.dataset.stateUrl, {
        cache: "no-store", credentials: "same-origin", headers: { "If-None-Match": body.dataset.state },
      });
      const tag = response.headers.get("ETag");
      if (response.status === 200 && tag && tag !== body.dataset.state) await refresh(tag);
    } catch (e) {
      // Engines stopped, or is busy: ask again later.
    }
  }
  liveTimer = setTimeout(poll, POLL_MS);
}

async function refresh(tag) {
  const old = document.getElementById("list-body");
  const response = await fetch(old.dataset.listUrl + location.search, { credentials: "same-origin" });
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("list-body");
  const active = document.activeElement;
  const selection = active && "selectionStart" in active ? [active.selectionStart, active.selectionEnd] : null;
  fresh.dataset.state = tag;
  document.title = fresh.dataset.title;
  document.getElementById("list-heading").textContent = fresh.dataset.heading;
  const oldRows = old.querySelector("#rows"), freshRows = fresh.querySelector("#rows");
  if (oldRows && freshRows) {
    old.dataset.state = tag;
    for (const mine of old.querySelectorAll("[data-live]")) {
      if (!fresh.querySelector("#" + mine.id)) mine.remove();  // a pager no longer needed
    }
    for (const part of [...fresh.querySelectorAll("[data-live]")]) {
      const mine = document.getElementById(part.id);
      if (mine && mine.outerHTML !== part.outerHTML) mine.replaceWith(part);
      else if (!mine && part.id === "pager-top") old.prepend(part);
      else if (!mine && part.id === "pager-bottom") old.append(part);
    }
    syncRows(oldRows, freshRows);
  } else if (!busy(old)) {
    old.replaceWith(fresh);
  }
  if (active && active.id && !active.isConnected) document.getElementById(active.id)?.focus();
  else if (active && active.isConnected && document.activeElement !== active) {
    active.focus({ preventScroll: true });
    if (selection) active.setSelectionRange(...selection);
  }
}

// A row being worked in: focused, typed in but not saved, or showing a note.
function busy(element) {
  return element.contains(document.activeElement) || element.querySelector(".note") !== null
    || [...element.querySelectorAll("input:not([type=hidden])")].some((input) => input.value !== input.defaultValue);
}

function syncRows(rows, freshRows) {
  const old = new Map([...rows.rows].map((row) => [row.id, row]));
  let at = rows.firstElementChild;
  for (const fresh of [...freshRows.rows]) {
    let row = fresh;
    const mine = old.get(fresh.id);
    old.delete(fresh.id);
    if (mine) {
      row = updateRow(mine, fresh);
      if (row !== mine) {
        if (at === mine) at = mine.nextElementSibling;
        mine.remove();
      }
    }
    if (row === at) at = at.nextElementSibling;
    else rows.insertBefore(row, at);
  }
  for (const gone of old.values()) {
    if (busy(gone)) gone.classList.add("gone");  // deleted elsewhere, but being worked in: stays until left
    else gone.remove();
  }
}

// The row to show: the fresh one, or this one with its cells that are not being worked in brought up to date.
function updateRow(mine, fresh) {
  if (!busy(mine)) return mine.outerHTML === fresh.outerHTML ? mine : fresh;
  mine.className = fresh.className;
  [...fresh.cells].forEach((cell, index) => {
    const current = mine.cells[index];
    if (current && !busy(current) && current.outerHTML !== cell.outerHTML) current.replaceWith(cell);
  });
  // The thrust box being worked in keeps what was typed; Escape then brings back what is saved now.
  const box = mine.querySelector("input[name=thrust]"), saved = fresh.querySelector("input[name=thrust]");
  if (box && saved && box.defaultValue !== saved.defaultValue) {
    const typed = box.value !== box.defaultValue;
    box.defaultValue = saved.defaultValue;
    if (!typed) box.value = saved.defaultValue;
  }
  return mine;
}

// -- In Engines' own window: downloads ask where to save, F5 and Ctrl+R reload ------------------
// (A browser does both itself. The page posts the link to Engines, which shows the system's Save dialog.)

document.addEventListener("DOMContentLoaded", () => {
  const saveUrl = document.body.dataset.windowSave;
  if (!saveUrl) return;
  document.addEventListener("click", async (event) => {
    const link = event.target.closest("a[download]");
    if (!link) return;
    event.preventDefault();
    const form = new FormData();
    form.append("csrf_token", document.querySelector("input[name=csrf_token]").value);
    form.append("href", link.getAttribute("href"));
    try {
      const response = await fetch(saveUrl, { method: "POST", body: form, credentials: "same-origin" });
      const body = await response.json();
      showMessage(body.message || body.error, Boolean(body.error) || !response.ok);
    } catch (e) {
      showMessage("Engines is not answering; is it still running?", true);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "F5" || ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "r")) {
      event.preventDefault();
      location.reload();
    }
  });
});
