// Engines: a few lines that make the list feel instant. Every form also
// works without JavaScript; this only saves a page load.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }
  for (const form of document.querySelectorAll("form.quick-thrust")) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setThrust(form);
    });
  }
});

async function setThrust(form) {
  const input = form.elements.thrust;
  const error = form.querySelector(".quick-error");
  const text = input.value.trim();
  error.textContent = "";
  form.classList.remove("saved");
  if (!/^[+-]?\d+$/.test(text)) {
    error.textContent = "Thrust must be a whole number.";
    return;
  }
  let response;
  try {
    response = await fetch(form.dataset.api, {
      method: "PATCH",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ thrust: Number(text) }),
      credentials: "same-origin",
    });
  } catch (e) {
    error.textContent = "Engines is not answering; is it still running?";
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    error.textContent = (body.fields && body.fields.thrust) || body.error || `Error ${response.status}`;
    return;
  }
  const row = form.closest("tr");
  const before = Number(row.querySelector("[data-thrust]").textContent.replace(/,/g, ""));
  showThrust(form, body.thrust);
  form.classList.add("saved");
  // A PATCH that changed the thrust made exactly one new version: Undo
  // reverts to the one before, unless the engine changed again since.
  if (body.thrust !== before) offerUndo(form, body.version);
}

function showThrust(form, thrust) {
  const row = form.closest("tr");
  row.querySelector("[data-thrust]").textContent = thrust.toLocaleString("en-US");
  form.elements.thrust.value = thrust;
  rescaleGauges(row, thrust);
}

function offerUndo(form, version) {
  let undo = form.querySelector("button.quick-undo");
  if (!undo) {
    undo = document.createElement("button");
    undo.type = "button";
    undo.className = "quick-undo";
    undo.textContent = "Undo";
    undo.addEventListener("click", () => undoThrust(form, undo));
    form.querySelector(".quick-error").before(undo);
  }
  undo.dataset.version = version;
  undo.hidden = false;
}

async function undoThrust(form, undo) {
  const error = form.querySelector(".quick-error");
  const version = Number(undo.dataset.version);
  error.textContent = "";
  let response;
  try {
    response = await fetch(`${form.dataset.api}/revert`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "If-Match": `"${version}"` },
      body: JSON.stringify({ version: version - 1 }),
      credentials: "same-origin",
    });
  } catch (e) {
    error.textContent = "Engines is not answering; is it still running?";
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    error.textContent = body.error || `Error ${response.status}`;
    return;
  }
  showThrust(form, body.thrust);
  offerUndo(form, body.version);  // the undo is a change too: undoing it redoes
}

// Gauges show each thrust against the strongest engine: raise the scale
// of the rows on screen when this one became the strongest.
function rescaleGauges(row, thrust) {
  row.querySelector("meter[data-gauge]").value = thrust;
  const gauges = document.querySelectorAll("meter[data-gauge]");
  if (thrust > Number(gauges[0].max)) {
    for (const gauge of gauges) gauge.max = thrust;
  }
}
