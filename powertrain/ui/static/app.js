// powertrain web UI: small plain script. Data is only ever set as text (textContent),
// never parsed as HTML; every state-changing request carries the page's CSRF token.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  async function postJSON(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "content-type": "application/json",
        accept: "application/json",
        "x-csrf-token": csrf,
      },
      body: JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : "HTTP " + response.status;
      throw new Error(message);
    }
    return data;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function traceHref(id) {
    return "/ui/traces/" + encodeURIComponent(id);
  }

  // -- traces: a changed select applies the filter at once -------------------------------
  if (page === "traces") {
    const form = document.getElementById("trace-filters");
    if (form) {
      form.querySelectorAll("select").forEach((select) => {
        select.addEventListener("change", () => form.submit());
      });
    }
  }

  // -- playground ---------------------------------------------------------------------------
  if (page === "playground") {
    const tasks = JSON.parse(document.getElementById("tasks-data").textContent || "{}");
    const form = document.getElementById("playground");
    const compare = document.getElementById("compare");
    const sides = ["a", "b"];
    const isTask = (value) => value.startsWith("task:");

    function taskOf(side) {
      const value = document.getElementById("target-" + side).value;
      return isTask(value) ? tasks[value.slice(5)] : null;
    }

    function fillVariants(side) {
      const select = document.getElementById("variant-" + side);
      const task = taskOf(side);
      select.replaceChildren();
      select.hidden = !task;
      if (!task) return;
      select.appendChild(el("option", "(traffic split)")).value = "";
      task.variants.forEach((name) => {
        select.appendChild(el("option", name)).value = name;
      });
    }

    function fillVariables() {
      const box = document.getElementById("variables");
      const task = taskOf("a");
      document.getElementById("task-inputs").hidden = !task;
      document.getElementById("chat-inputs").hidden = !!task;
      box.replaceChildren();
      if (!task) return;
      Object.entries(task.variables).forEach(([name, spec]) => {
        const label = el("label", name + " (" + spec.type + (spec.required ? "" : ", optional") + ")");
        const input = el(spec.type === "string" ? "textarea" : "input");
        input.name = "var-" + name;
        input.dataset.variable = name;
        input.dataset.type = spec.type;
        if (spec.type === "string") input.rows = 3;
        else input.placeholder = "JSON " + spec.type;
        if (spec.description) input.title = spec.description;
        label.appendChild(input);
        box.appendChild(label);
      });
    }

    function variables() {
      const out = {};
      document.querySelectorAll("#variables [data-variable]").forEach((input) => {
        const raw = input.value;
        if (raw === "") return;
        if (input.dataset.type === "string") {
          out[input.dataset.variable] = raw;
        } else {
          try {
            out[input.dataset.variable] = JSON.parse(raw);
          } catch (_) {
            throw new Error(input.dataset.variable + " must be JSON (" + input.dataset.type + ")");
          }
        }
      });
      return out;
    }

    function number(id) {
      const value = document.getElementById(id).value;
      return value === "" ? null : Number(value);
    }

    function showResult(side, result) {
      const box = document.getElementById("result-" + side);
      box.hidden = false;
      const title = result.target + (result.variant ? " @ " + result.variant : "");
      box.querySelector(".result-title").textContent = title;
      const output = box.querySelector("pre.output");
      const error = box.querySelector(".error-box");
      output.textContent = result.output !== undefined ? result.output : "";
      output.hidden = result.output === undefined;
      error.textContent = result.error || "";
      error.hidden = !result.error;
      const facts = box.querySelector("dl.facts");
      facts.replaceChildren();
      const rows = [
        ["model", result.model],
        ["version", result.version],
        ["tokens", result.prompt_tokens !== undefined ? result.prompt_tokens + " + " + result.completion_tokens : null],
        ["cost", result.cost_usd !== undefined ? "$" + Number(result.cost_usd).toFixed(6) : null],
        ["latency", result.latency_ms !== undefined ? Math.round(result.latency_ms) + " ms" : null],
        ["TTFT", result.ttft_ms !== undefined && result.ttft_ms !== null ? Math.round(result.ttft_ms) + " ms" : null],
      ];
      rows.forEach(([name, value]) => {
        if (value === undefined || value === null) return;
        const item = el("div");
        item.appendChild(el("dt", name));
        item.appendChild(el("dd", value));
        facts.appendChild(item);
      });
      const link = box.querySelector(".trace-link");
      link.hidden = !result.trace_id;
      if (result.trace_id) {
        link.href = traceHref(result.trace_id);
        link.textContent = "trace " + result.trace_id;
      }
    }

    sides.forEach((side) => {
      document.getElementById("target-" + side).addEventListener("change", () => {
        fillVariants(side);
        if (side === "a") fillVariables();
      });
      fillVariants(side);
    });
    fillVariables();
    compare.addEventListener("change", () => {
      document.querySelector('fieldset.target[data-side="b"]').hidden = !compare.checked;
      if (!compare.checked) document.getElementById("result-b").hidden = true;
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const state = document.getElementById("run-state");
      const failure = document.getElementById("run-error");
      failure.hidden = true;
      const runs = sides
        .filter((side) => side === "a" || compare.checked)
        .map((side) => ({
          target: document.getElementById("target-" + side).value,
          variant: document.getElementById("variant-" + side).value || null,
        }));
      const body = { runs: runs };
      try {
        if (isTask(runs[0].target)) {
          body.variables = variables();
        } else {
          body.system = document.getElementById("system").value || null;
          body.user = document.getElementById("user").value;
          body.temperature = number("temperature");
          body.max_tokens = number("max_tokens");
          body.seed = number("seed");
        }
        state.textContent = "running…";
        document.getElementById("run").disabled = true;
        const data = await postJSON("/ui/playground/run", body);
        data.results.forEach((result, i) => showResult(sides[i], result));
        state.textContent = "done";
      } catch (error) {
        failure.textContent = error.message;
        failure.hidden = false;
        state.textContent = "";
      } finally {
        document.getElementById("run").disabled = false;
      }
    });
  }

  // -- a fine-tuning job: follow its progress until it ends -----------------------------------
  if (page === "finetune") {
    const box = document.getElementById("progress");
    if (box && box.dataset.poll) {
      const initial = box.dataset.status;
      const loadedAt = Date.now();
      // A resumed job still reads failed/cancelled until its new worker claims it.
      const resumed = initial === "failed" || initial === "cancelled";
      const note = document.getElementById("progress-note");
      const points = Number(box.dataset.points || 0);
      let polls = 0;
      const short = (value) =>
        typeof value === "number" ? String(Number(value.toPrecision(4))) : String(value);

      function show(job) {
        const phase = document.getElementById("progress-phase");
        if (!phase) return; // scoring: nothing but the note to show
        const p = job.progress || {};
        phase.textContent = p.phase || job.status;
        document.getElementById("progress-count").textContent =
          p.total ? p.step + " / " + p.total : "";
        const fill = box.querySelector("svg.bar .fill");
        if (fill && p.total) fill.setAttribute("width", String((100 * p.step) / p.total));
        const metrics = Object.entries(p.metrics || {})
          .sort(([a], [b]) => (a < b ? -1 : 1))
          .map(([name, value]) => name + " " + short(value));
        document.getElementById("progress-metrics").textContent = metrics.join(" · ");
      }

      async function poll() {
        polls += 1;
        try {
          const response = await fetch(box.dataset.poll, {
            credentials: "same-origin",
            headers: { accept: "application/json" },
          });
          if (!response.ok) throw new Error("HTTP " + response.status);
          const job = await response.json();
          // A new status, a score, or new loss points (at most every 15 s): the page
          // shows them.
          const grown = job.points !== points && Date.now() - loadedAt > 15000;
          const scored = job.scored !== (box.dataset.scored === "1");
          if (job.status !== initial || scored || grown) {
            window.location.reload();
            return;
          }
          show(job);
        } catch (error) {
          note.textContent = "could not refresh: " + error.message;
        }
        if (resumed && polls >= 30) {
          note.textContent = "No worker has picked the job up in a minute: see worker.log below.";
          return;
        }
        if (initial === "succeeded" && polls >= 360) return; // half an hour: never scored
        setTimeout(poll, initial === "succeeded" ? 5000 : 2000); // scoring: no progress to show
      }
      setTimeout(poll, 2000);
    }
  }

  // -- annotation queue: keyboard-driven feedback ---------------------------------------------
  if (page === "annotate") {
    const items = Array.from(document.querySelectorAll(".qitem"));
    const progress = document.getElementById("progress");
    const fill = document.getElementById("progress-fill");
    let current = 0;
    let saved = 0;

    function move(to) {
      if (!items.length) return;
      current = Math.max(0, Math.min(items.length - 1, to));
      items.forEach((item, i) => item.classList.toggle("current", i === current));
      items[current].scrollIntoView({ block: "nearest" });
    }

    function nextOpen(from) {
      for (let i = from + 1; i < items.length; i++) if (!items[i].classList.contains("done")) return i;
      for (let i = 0; i < items.length; i++) if (!items[i].classList.contains("done")) return i;
      return from;
    }

    function field(item, name) {
      return item.querySelector('[name="' + name + '"]');
    }

    function setState(item, text, kind) {
      const state = item.querySelector(".state");
      state.textContent = text;
      state.className = "state small " + (kind || "muted");
    }

    async function save(item) {
      const checked = item.querySelector('input[name="thumb"]:checked');
      const body = {
        thumb: checked ? checked.value : null,
        label: field(item, "label").value.trim() || null,
        correction: field(item, "correction").value.trim() || null,
        comment: field(item, "comment").value.trim() || null,
      };
      if (!body.thumb && !body.label && !body.correction && !body.comment) {
        setState(item, "give a thumb (u/d), a label, a correction or a comment first", "failed");
        return;
      }
      setState(item, "saving…");
      try {
        await postJSON(item.querySelector("form").action, body);
      } catch (error) {
        setState(item, "not saved: " + error.message, "failed");
        return;
      }
      if (!item.classList.contains("done")) saved += 1;
      item.classList.add("done");
      setState(item, "saved", "saved");
      const total = Number(progress.dataset.total);
      progress.textContent = saved + " of " + total + " labelled";
      fill.setAttribute("width", String((100 * saved) / total));
      if (document.activeElement) document.activeElement.blur();
      move(nextOpen(items.indexOf(item)));
    }

    function typing(target) {
      return target.matches("textarea, input:not([type]), input[type=text], input[type=search]");
    }

    items.forEach((item, i) => {
      item.querySelector("form").addEventListener("submit", (event) => {
        event.preventDefault();
        save(item);
      });
      item.addEventListener("focusin", () => {
        if (current !== i) move(i);
      });
    });

    document.addEventListener("keydown", (event) => {
      if (!items.length || event.ctrlKey || event.metaKey || event.altKey) return;
      const item = items[current];
      if (typing(event.target)) {
        if (event.key === "Escape") event.target.blur();
        else if (event.key === "Enter" && !event.shiftKey && event.target.closest(".qitem")) {
          event.preventDefault();
          save(event.target.closest(".qitem"));
        }
        return;
      }
      const focus = (name) => {
        event.preventDefault();
        field(item, name).focus();
      };
      switch (event.key) {
        case "j": move(current + 1); break;
        case "k": move(current - 1); break;
        case "u": item.querySelector('input[name="thumb"][value="up"]').checked = true; break;
        case "d": item.querySelector('input[name="thumb"][value="down"]').checked = true; break;
        case "l": focus("label"); break;
        case "c": focus("correction"); break;
        case "m": focus("comment"); break;
        case "Enter": event.preventDefault(); save(item); break;
        default: return;
      }
    });
  }
})();
