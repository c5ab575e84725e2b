// Turnout console: the little the pages do with scripts. Every page works without them
// (forms post, the confirmation page asks, the deployments table shows its state when loaded);
// with them, a dialog confirms, the copy button copies and the deployments table refreshes.
"use strict";

function confirmForms() {
  const dialog = document.getElementById("confirm-dialog");
  if (!dialog || typeof dialog.showModal !== "function") return;
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      const confirmed = form.querySelector('input[name="confirmed"]');
      if (!confirmed || confirmed.value === "yes") return;
      event.preventDefault();
      document.getElementById("confirm-text").textContent = form.dataset.confirm;
      document.getElementById("confirm-ok").textContent = form.dataset.confirmButton || "Confirm";
      dialog.returnValue = "";
      dialog.onclose = () => {
        if (dialog.returnValue !== "ok") return;
        confirmed.value = "yes";
        form.submit();
      };
      dialog.showModal();
    });
  }
}

function copyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      const text = source.textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
      } catch {
        // No clipboard (not a secure context): select the text for Ctrl+C instead.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
      }
      button.textContent = "Copied";
      const note = document.querySelector("[data-copied-note]");
      if (note) note.hidden = false;
    });
  }
}

const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const duration = (ms) =>
  ms === null || ms === undefined ? "–" : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
const used = (n, limit) => (limit ? `${number(n)} / ${number(limit)}` : number(n));

function badge(text, kind) {
  const span = document.createElement("span");
  span.className = `badge ${kind}`;
  span.textContent = text;
  return span;
}

function showDeployment(row, d) {
  const cell = (field) => row.querySelector(`[data-field="${field}"]`);
  row.className = d.state;
  const state = cell("state");
  if (d.state === "cooling_down") {
    state.replaceChildren(badge("cooling down", "cooling"), ` ${d.cooldown_remaining_s.toFixed(1)} s left`);
  } else {
    state.replaceChildren(badge("healthy", "healthy"));
  }
  cell("in_flight").textContent = String(d.in_flight);
  cell("latency").textContent = duration(d.latency_ema_ms);
  cell("failures").textContent = `${d.recent_failures} / ${d.failures_total}`;
  cell("requests").textContent = number(d.requests_total);
  cell("rpm").textContent = used(d.rpm_used, d.rpm_limit);
  cell("tpm").textContent = used(d.tpm_used, d.tpm_limit);
}

function pollDeployments() {
  const table = document.querySelector("table[data-poll]");
  if (!table) return;
  const url = table.dataset.poll;
  const refreshed = document.getElementById("refreshed");
  const tick = async () => {
    let reply;
    try {
      reply = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    } catch {
      return; // the gateway restarting: try again on the next tick
    }
    if (reply.status === 401) {
      window.location.reload(); // the session ended: the page sends us to the login
      return;
    }
    if (!reply.ok) return;
    const state = await reply.json();
    for (const d of state.deployments) {
      const row = table.querySelector(`tr[data-id="${CSS.escape(d.id)}"]`);
      if (row) showDeployment(row, d);
    }
    if (refreshed) {
      refreshed.textContent = `Updated ${new Date(state.at * 1000).toISOString().slice(0, 19).replace("T", " ")} UTC.`;
      refreshed.dataset.at = String(state.at);
    }
  };
  setInterval(tick, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  confirmForms();
  copyButtons();
  pollDeployments();
});
