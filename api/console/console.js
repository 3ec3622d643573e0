// Phoenix console: the little the server cannot do alone. Parts of a page
// refresh themselves, and forms marked data-api call the JSON API with the
// session's CSRF token. Nothing here ever puts a token in a URL.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

async function refresh(element) {
  if (document.hidden) return;
  try {
    const response = await fetch(element.dataset.refresh, { credentials: "same-origin" });
    if (response.status === 401 || response.redirected) { location.assign("/login"); return; }
    if (response.ok) {
      element.innerHTML = await response.text();
      bind(element);
    }
  } catch (_) { /* the next tick tries again */ }
}

// The JSON body of a data-api form: checkboxes named alike become a list,
// data-json fields are parsed, numbers stay numbers, empty fields are left out.
function body(form) {
  const value = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled) continue;
    if (field.type === "checkbox") {
      value[field.name] ??= [];
      if (field.checked) value[field.name].push(field.value);
    } else if (field.value === "") {
      continue;
    } else if (field.dataset.json !== undefined) {
      value[field.name] = JSON.parse(field.value);
    } else if (field.type === "number") {
      value[field.name] = Number(field.value);
    } else {
      value[field.name] = field.value;
    }
  }
  return value;
}

function confirmed(message) {
  const dialog = document.getElementById("confirm");
  if (!dialog || !message) return Promise.resolve(true);
  dialog.querySelector("p").textContent = message;
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  });
}

async function submit(event) {
  const form = event.currentTarget;
  event.preventDefault();
  if (!(await confirmed(form.dataset.confirm))) return;
  const report = form.querySelector("[data-report]");
  if (report) report.textContent = "";
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const response = await fetch(form.dataset.api, {
      method: form.dataset.method ?? "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf() },
      body: JSON.stringify(body(form)),
    });
    const text = await response.text();
    const answer = text ? JSON.parse(text) : {};
    if (!response.ok) {
      if (report) report.textContent = answer.detail ?? answer.title ?? `HTTP ${response.status}`;
      return;
    }
    const show = form.dataset.show;
    const output = show && form.querySelector("output");
    if (output) {
      output.textContent = answer[show];
      output.hidden = false;
      output.focus();
    } else if (form.dataset.then) {
      location.assign(form.dataset.then.replace("{id}", encodeURIComponent(answer.id ?? "")));
    } else {
      location.reload();
    }
  } catch (error) {
    if (report) report.textContent = `The request failed: ${error.message}`;
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function bind(root) {
  root.querySelectorAll("form[data-api]").forEach((form) => {
    if (form.dataset.bound) return;
    form.dataset.bound = "1";
    form.addEventListener("submit", submit);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  bind(document);
  document.querySelectorAll("[data-refresh]").forEach((element) => {
    const seconds = Number(element.dataset.every ?? 10);
    setInterval(() => refresh(element), seconds * 1000);
  });
});
