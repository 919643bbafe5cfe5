// The web UI in a real browser (Debian's chromium through playwright-core): the flows a
// person goes through, a screenshot of every page, and a JSON report on stdout that
// tests/test_ui_browser.py checks. Inputs come from the environment (see that test).
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const BASE = env("UI_BASE_URL");
const KEY = env("UI_ADMIN_KEY");
const SHOTS = env("UI_ARTIFACTS");
const XSS_TRACE = env("UI_XSS_TRACE");
const QUESTION = env("UI_QUESTION");
const TASK = env("UI_TASK");
const FINETUNE_JOB = env("UI_FINETUNE_JOB");
const CURVES_JOB = env("UI_CURVES_JOB");

mkdirSync(SHOTS, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "pt-chromium-"));
const report = { pages: [], problems: [] };
// A response a step provokes on purpose (a refused form's 4xx), which chromium logs.
let expectedError = null;
const steps = [];

// A fresh profile directory per run (playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  report.pages.push({ name, url: page.url().replace(BASE, "") });
}

async function step(name, work) {
  const started = Date.now();
  await work();
  steps.push({ name, ms: Date.now() - started });
}

try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(20_000);
  // Anything the page's own markup or script does that the CSP refuses, and any script
  // error, is a problem: the UI must work under its own policy.
  page.on("console", (message) => {
    if (expectedError && message.text().includes(expectedError)) return;
    if (message.type() === "error") {
      report.problems.push(`console: ${message.text()} (${message.location().url})`);
    }
  });
  page.on("pageerror", (error) => report.problems.push(`page error: ${error.message}`));

  await step("sign in", async () => {
    await page.goto(BASE + "/");
    await page.waitForURL(/\/ui\/signin/);
    await shot(page, "signin");
    await page.fill("#key", KEY);
    await Promise.all([page.waitForURL(/\/ui\/traces/), page.press("#key", "Enter")]);
    await shot(page, "traces");
  });

  await step("a fine-tune in training", async () => {
    // Started just before the browser: queued or training (its progress), or done already.
    await page.goto(BASE + `/ui/finetunes/${FINETUNE_JOB}`);
    await shot(page, "finetune-progress");
  });

  let playgroundTrace = null;
  await step("playground call", async () => {
    await page.goto(BASE + "/ui/playground");
    await page.selectOption("#target-a", "gpt");
    await page.fill("#user", QUESTION);
    await page.check("#compare");
    await page.selectOption("#target-b", "mini");
    await page.click("#run");
    await page.locator("#result-a .trace-link").waitFor({ state: "visible" });
    await page.locator("#result-b .trace-link").waitFor({ state: "visible" });
    playgroundTrace = (await page.textContent("#result-a .trace-link")).replace("trace ", "");
    report.playground = {
      trace: playgroundTrace,
      output_a: await page.textContent("#result-a pre.output"),
      output_b: await page.textContent("#result-b pre.output"),
      title_b: await page.textContent("#result-b .result-title"),
    };
    await shot(page, "playground");
  });

  await step("task in the playground", async () => {
    await page.goto(BASE + "/ui/playground");
    await page.selectOption("#target-a", `task:${TASK}`);
    await page.locator("#variables textarea").first().fill("The screen cracked on day one");
    await page.click("#run");
    await page.locator("#result-a .trace-link").waitFor({ state: "visible" });
    report.task_run = {
      output: await page.textContent("#result-a pre.output"),
      title: await page.textContent("#result-a .result-title"),
    };
    await shot(page, "playground-task");
  });

  await step("find the playground trace", async () => {
    await page.goto(BASE + "/ui/traces");
    await page.fill('input[name="q"]', QUESTION);
    await Promise.all([page.waitForURL(/q=/), page.press('input[name="q"]', "Enter")]);
    await shot(page, "traces-search");
    await Promise.all([page.waitForURL(/\/ui\/traces\/tr_/), page.click(`a[href="/ui/traces/${playgroundTrace}"]`)]);
    report.found_trace = {
      url: page.url().replace(BASE, ""),
      output: await page.textContent("#output"),
      source: await page.textContent("dl.facts"),
    };
    await shot(page, "trace");
  });

  await step("costs and tasks", async () => {
    await page.goto(BASE + "/ui/costs?range=24h&by=model");
    report.charts = await page.locator("figure.chart polyline").count();
    await shot(page, "costs");
    await page.goto(BASE + "/ui/tasks");
    await shot(page, "tasks");
    await page.click(`a[href="/ui/tasks/${TASK}"]`);
    report.task_page = {
      diff_lines: await page.locator("pre.diff span").count(),
      // The task's own variants (the fine-tune started at the beginning may have added one).
      split_rows: await page.locator("#traffic-split tbody tr:not(:has(.tuned))").count(),
    };
    await shot(page, "task");
  });

  const labelled = [];
  await step("label three traces in the annotation queue", async () => {
    await page.goto(BASE + "/ui/annotate");
    await shot(page, "annotate");
    for (let n = 0; n < 3; n++) {
      const current = page.locator(".qitem.current");
      const id = await current.getAttribute("data-trace");
      await page.keyboard.press("u");
      await page.keyboard.press("l");
      await page.keyboard.type(`label-${n}`);
      await page.keyboard.press("Enter");
      await page.locator(`.qitem[data-trace="${id}"].done`).waitFor();
      labelled.push(id);
    }
    report.progress = await page.textContent("#progress");
    report.labelled = labelled;
    await shot(page, "annotate-done");
  });

  await step("build a dataset from feedback", async () => {
    await page.goto(BASE + "/ui/datasets");
    await page.fill("#dataset-name", "thumbs-up");
    await page.fill("#dataset-feedback", "up");
    await Promise.all([page.waitForURL(/\/ui\/datasets\/thumbs-up/), page.click('#build button[type="submit"]')]);
    report.dataset_traces = await page.locator("a.source-trace").allTextContents();
    await shot(page, "dataset");
    await page.goto(BASE + "/ui/datasets");
    await shot(page, "datasets");
  });

  await step("open an eval run's matrix", async () => {
    // The suite's run (the fine-tune's scoring may have made a newer one).
    await page.goto(BASE + "/ui/evals");
    await shot(page, "evals");
    await Promise.all([page.waitForURL(/\/ui\/evals\/ev_/), page.locator("table tr", { hasText: "capitals" }).locator("a.mono").first().click()]);
    report.matrix = {
      cells: await page.locator("table.matrix td.cell").count(),
      passed: await page.locator("table.matrix td.cell.pass").count(),
      failed: await page.locator("table.matrix td.cell.fail").count(),
    };
    await shot(page, "eval-run");
    await Promise.all([page.waitForURL(/\/ui\/traces\/tr_/), page.locator("table.matrix td.cell a").first().click()]);
    report.matrix.drilled_to = page.url().replace(BASE, "");
    await shot(page, "eval-cell-trace");
  });

  await step("hostile output stays text", async () => {
    await page.goto(BASE + `/ui/traces/${XSS_TRACE}`);
    report.xss = {
      pwned: await page.evaluate(() => typeof window.__pwned),
      output: await page.textContent("#output"),
      images: await page.locator("main img").count(),
    };
    await shot(page, "trace-hostile");
    await page.goto(BASE + "/ui/traces");
    report.xss.pwned_in_list = await page.evaluate(() => typeof window.__pwned);
    await page.goto(BASE + "/ui/annotate");
    report.xss.pwned_in_queue = await page.evaluate(() => typeof window.__pwned);
  });

  await step("a fine-tune: the start form, the job, the methods compared, a canary", async () => {
    report.finetune = {};
    await page.goto(BASE + "/ui/finetunes");
    // A refusal first: the form says why and keeps what was typed.
    await page.selectOption("#start-task", TASK);
    await page.fill("#start-dataset", "reviews");
    await page.selectOption("#start-method", "classifier");
    await page.fill("#start-settings", "{epochs: 2");
    expectedError = "status of 400 (Bad Request)";
    await page.click('#start button[type="submit"]');
    await page.locator("#start-error").waitFor();
    expectedError = null;
    report.finetune.start_error = await page.textContent("#start-error");
    await shot(page, "finetunes-start-error");
    await page.goto(BASE + "/ui/finetunes");
    await shot(page, "finetunes");
    await Promise.all([
      page.waitForURL(/\/ui\/finetunes\/ft_/),
      page.click(`a[href="/ui/finetunes/${FINETUNE_JOB}"]`),
    ]);
    // The page follows the job itself: app.js polls, and reloads when it ends and is scored.
    await page.locator("#scoring table").waitFor({ timeout: 180_000 });
    report.finetune.status = (await page.textContent("#job-status")).trim();
    report.finetune.model = (await page.textContent("#job-model")).trim();
    report.finetune.loss = await page.textContent("#loss");
    await shot(page, "finetune-job");
    await Promise.all([
      page.waitForURL(/\/ui\/finetunes\/compare/),
      page.click('#actions a[href^="/ui/finetunes/compare"]'),
    ]);
    report.finetune.recommended = (await page.textContent(".recommendation b")).trim();
    await shot(page, "finetune-compare");
    await page.goto(BASE + `/ui/finetunes/${FINETUNE_JOB}`);
    await page.fill("#promote-share", "25%");
    await Promise.all([page.waitForURL(/\/ui\/tasks\//), page.click("#promote-canary")]);
    report.finetune.history = await page
      .locator("#split-history tbody tr")
      .evaluateAll((rows) =>
        rows.map((row) =>
          [2, 3, 4].map((i) => row.children[i].textContent.replace(/\s+/g, " ").trim()).join(" "),
        ),
      );
    await shot(page, "task-promoted");
    await page.goto(BASE + `/ui/finetunes/${CURVES_JOB}`);
    report.finetune.curves = {
      lines: await page.locator("#loss svg polyline").count(),
      dots: await page.locator("#loss svg circle").count(),
    };
    await shot(page, "finetune-curves");
  });

  await step("sign out", async () => {
    await Promise.all([page.waitForURL(/\/ui\/signin/), page.click(".who button")]);
    await page.goto(BASE + "/ui/traces");
    report.after_sign_out = page.url().replace(BASE, "");
  });
} catch (error) {
  report.error = String(error && error.stack ? error.stack : error);
} finally {
  report.steps = steps;
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(report) + "\n");
