// The dashboard's only script (no inline script: the Content-Security-Policy forbids it).
// Untrusted text (model output, inputs) is only ever set with textContent, never as markup.
"use strict";

// Once a form is sent the page is on its way out: no refresh may reload it under the form's answer.
let leaving = false;
document.addEventListener("submit", () => {
  leaving = true;
});
document.addEventListener("htmx:beforeRequest", (event) => {
  if (leaving) event.preventDefault();
});

document.addEventListener("htmx:configRequest", (event) => {
  const token = document.querySelector('meta[name="csrf-token"]');
  if (token) event.detail.headers["X-CSRF-Token"] = token.content;
});

function followTokens(pane) {
  const source = new EventSource(pane.dataset.events);
  let node = null;
  let line = null;
  const refresh = () => !leaving && window.htmx && window.htmx.trigger("#detail", "refresh");
  source.addEventListener("node_started", (event) => {
    node = JSON.parse(event.data).node;
    line = null;
  });
  source.addEventListener("token", (event) => {
    const data = JSON.parse(event.data);
    if (data.restart && line !== null && data.node === node) {
      line.textContent = ""; // the visit's earlier text is void: its answer starts again
    } else if (line === null || data.node !== node) {
      node = data.node;
      const heading = document.createElement("span");
      heading.className = "node";
      heading.textContent = (pane.textContent ? "\n" : "") + "[" + data.node + "] ";
      pane.appendChild(heading);
      line = document.createElement("span");
      line.className = "text";
      pane.appendChild(line);
    }
    line.textContent += data.text;
  });
  for (const name of ["node_finished", "awaiting_input", "retried"]) source.addEventListener(name, refresh);
  for (const name of ["complete", "failed", "cancelled"]) {
    source.addEventListener(name, () => {
      source.close();
      refresh();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const pane = document.getElementById("tokens");
  if (pane && pane.dataset.events) followTokens(pane);
});
