// serve.test.cjs - `resid serve` in headless Chromium: the page loads, a
// prompt typed into the form is explained (spinner, then the views), the
// DOM matches the CLI's JSON, a head without precomputed details is fetched
// from /api/head, a neuron opens its details; the ablate buttons of a
// neuron and a head show /api/ablate's p(target) before -> after, in mode
// zero and in the modes chosen in the page (mean over two prompts, replace
// from a clean prompt, add at two scales), each equal to /api/ablate's
// answer to the same request, and the mode's errors (client-side and the
// server's 400) shown in the page; the
// "compare scores" box adds the comparison panel; while a long request
// runs the status shows its stage from /api/progress ("head x positions and neurons (5/11)
// · 0.4 s"), or "waiting for another request" behind another client's,
// then "done in"; no console errors, no request leaves 127.0.0.1.
// Screenshots: browser-serve*.png.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { spawn } = require('node:child_process');
const { launch, cli, CLI, STORIES, PROMPT } = require('./lib.cjs');

function startServer(extra = []) {
  return new Promise((resolve, reject) => {
    const p = spawn(CLI, ['serve', STORIES, '--port', '0', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    const timer = setTimeout(() => { p.kill(); reject(new Error('server did not start: ' + err)); }, 20000);
    p.stderr.on('data', (d) => {
      err += d;
      const m = /http:\/\/127\.0\.0\.1:(\d+)\//.exec(err);
      if (m) { clearTimeout(timer); resolve({ proc: p, url: `http://127.0.0.1:${m[1]}/` }); }
    });
    p.on('exit', (c) => { clearTimeout(timer); reject(new Error('server exited ' + c + ': ' + err)); });
  });
}

test('resid serve: explain a typed prompt, open a head and a neuron', async () => {
  const json = JSON.parse(cli(['explain', STORIES, '-p', PROMPT, '--vs', ' a', '--json', '-']));
  const L = json.model.n_layer, H = json.model.n_head, T = json.tokens.length;
  const srv = await startServer();
  const { browser, page, errors } = await launch();
  try {
    await page.goto(srv.url);
    await page.fill('#f-prompt', PROMPT);
    await page.fill('#f-vs', ' a');
    await page.click('#f-go');
    await page.waitForSelector('#head-map', { timeout: 60000 });
    assert.match(await page.textContent('#status'), /done in/);
    assert.strictEqual(await page.textContent('#summary .target .tok.big'), json.target.text.replace(/ /g, '\u2423'));
    assert.match(await page.textContent('#target-prob'), new RegExp(json.target.prob.toFixed(4)));
    assert.strictEqual(await page.locator('#head-map .head-cell').count(), L * H);
    assert.strictEqual(await page.locator('#layer-chart .bar').count(), 2 * L);
    assert.strictEqual(await page.locator('#lens-grid .cell').count(), (2 * L + 1) * T);
    // The units are those of the CLI (contrast ranking).
    const ids = await page.locator('#ffn-table tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.id));
    assert.deepStrictEqual(ids, json.ffn_neurons.map((n) => n.id));
    await page.screenshot({ path: 'browser-serve.png', fullPage: true });

    // The worst head by contrast has no precomputed details: /api/head.
    const worst = json.heads.slice().sort((a, b) => a.contrast - b.contrast)[0];
    const resp = page.waitForResponse((r) => r.url().endsWith('/api/head'));
    await page.click(`#head-map .head-cell[data-id="${worst.id}"]`);
    assert.strictEqual((await resp).status(), 200);
    await page.waitForSelector('#head-pos-chart');
    assert.strictEqual(await page.locator('#head-pos-chart .bar').count(), T);
    assert.match(await page.textContent('#head-detail h3'), new RegExp('Head ' + worst.id));

    const n0 = json.ffn_neurons[json.ffn_neurons.findIndex((n) => n.layer > 0)];
    await page.click(`#ffn-table tr[data-id="${n0.id}"]`);
    assert.match(await page.textContent('#neuron-detail h3'), new RegExp('Neuron ' + n0.id));
    assert.ok(await page.locator('#query-neurons tr').count() > 1);

    // Ablate that neuron: the page shows /api/ablate's before -> after, and
    // the same request sent from here gives the same numbers.
    let body = null;
    const ab = page.waitForResponse((r) => r.url().endsWith('/api/ablate'));
    await page.click('#neuron-ablate');
    const abr = await ab;
    assert.strictEqual(abr.status(), 200);
    const shown = await abr.json();
    body = JSON.parse(abr.request().postData());
    assert.deepStrictEqual(body.units, ['n:' + n0.id]);
    assert.strictEqual(body.mode, 'zero');
    await page.waitForSelector('#neuron-ablate-result .after');
    const direct = await (await fetch(srv.url + 'api/ablate', { method: 'POST', body: JSON.stringify({ prompt: PROMPT, units: ['n:' + n0.id] }) })).json();
    assert.deepStrictEqual(direct.before, shown.before);
    assert.deepStrictEqual(direct.after, shown.after);
    assert.deepStrictEqual(direct.units, ['n:' + n0.id]);
    assert.strictEqual(direct.target.id, json.target.id);
    const res = page.locator('#neuron-ablate-result');
    assert.strictEqual(Number(await res.getAttribute('data-before')), direct.before.prob);
    assert.strictEqual(Number(await res.getAttribute('data-after')), direct.after.prob);
    assert.strictEqual(await res.locator('.before').textContent(), direct.before.prob.toFixed(4));
    assert.strictEqual(await res.locator('.after').textContent(), direct.after.prob.toFixed(4));
    assert.ok(direct.before.prob !== direct.after.prob, 'zeroing a top neuron changes p(target)');
    // p(target) before is the report's (paper lens).
    assert.ok(Math.abs(direct.before.prob - json.target.prob) < 1e-6);
    await page.locator('#neurons').screenshot({ path: 'browser-serve-ablate.png' });

    // And a head (the worst one, still open).
    const hb = page.waitForResponse((r) => r.url().endsWith('/api/ablate'));
    await page.click('#head-ablate');
    const hshown = await (await hb).json();
    await page.waitForSelector('#head-ablate-result .after');
    assert.deepStrictEqual(hshown.units, ['h:' + worst.id]);
    assert.strictEqual(await page.locator('#head-ablate-result .after').textContent(), hshown.after.prob.toFixed(4));

    // The other modes, chosen in the shared control under the form: the
    // page sends the mode's fields, and shows the numbers /api/ablate (and
    // `resid ablate --json`) give for the same request, naming the mode.
    let sent = 0;
    const countAblate = (r) => { if (r.url().endsWith('/api/ablate')) sent++; };
    page.on('request', countAblate);
    const nunit = ['n:' + n0.id];
    const post = async (b) => (await fetch(srv.url + 'api/ablate', { method: 'POST', body: JSON.stringify(b) })).json();
    const ablateVia = async (button, check) => {
      const done = page.waitForResponse((r) => r.url().endsWith('/api/ablate'));
      await page.click('#' + button);
      const r = await done;
      assert.strictEqual(r.status(), 200);
      const sentBody = JSON.parse(r.request().postData());
      await page.waitForSelector(`#${button}-result .after`);
      const res = page.locator(`#${button}-result`);
      const ref = await post(check.body);
      assert.ok(!ref.error, ref.error);
      for (const [k, v] of Object.entries(check.body)) if (k !== 'prompt') assert.deepStrictEqual(sentBody[k], v, 'sent ' + k);
      assert.strictEqual(await res.getAttribute('data-mode'), check.body.mode);
      assert.strictEqual(Number(await res.getAttribute('data-before')), ref.before.prob);
      assert.strictEqual(Number(await res.getAttribute('data-after')), ref.after.prob);
      assert.strictEqual(await res.locator('.before').textContent(), ref.before.prob.toFixed(4));
      assert.strictEqual(await res.locator('.after').textContent(), ref.after.prob.toFixed(4));
      assert.match(await res.textContent(), check.label);
      console.log(`# ${button} ${check.body.mode}: shown ${await res.locator('.before').textContent()} -> ${await res.locator('.after').textContent()} == /api/ablate`);
      return ref;
    };

    // Mean over two reference prompts (a blank line is skipped).
    const MEAN = ['Lily went to the park', 'The cat sat on the mat'];
    await page.selectOption('#ab-mode', 'mean');
    assert.strictEqual(await page.textContent('#neuron-ablate'), 'ablate (mean)');
    assert.ok(await page.locator('#ab-clean').isHidden());
    await page.fill('#ab-mean', MEAN[0] + '\n\n' + MEAN[1] + '\n');
    const mean = await ablateVia('neuron-ablate', { body: { prompt: PROMPT, units: nunit, mode: 'mean', mean_prompts: MEAN }, label: /^mean over 2 prompts: p\(target\)/ });
    assert.strictEqual(mean.n_mean_prompts, 2);
    assert.ok(mean.after.prob !== direct.after.prob, 'mean ablation differs from zeroing');

    // More than 16 prompts, or none: said in the page, nothing sent.
    const before = sent;
    await page.fill('#ab-mean', Array.from({ length: 17 }, (_, i) => 'Tim saw ' + i).join('\n'));
    await page.click('#neuron-ablate');
    assert.match(await page.textContent('#neuron-ablate-result .error'), /mode mean: at most 16 reference prompts, one per line; there are 17/);
    await page.fill('#ab-mean', ' \n');
    await page.click('#neuron-ablate');
    assert.match(await page.textContent('#neuron-ablate-result .error'), /mode mean: type 1 to 16 reference prompts/);
    assert.strictEqual(await page.locator('#neuron-ablate-result').getAttribute('data-after'), null);
    assert.strictEqual(sent, before, 'an invalid mean request is not sent');

    // Replace from a clean prompt of the same length (21 tokens), also
    // against the CLI.
    const CLEAN = 'Once upon a time, there was a girl named Tim. Tim had a big red';
    await page.selectOption('#ab-mode', 'replace');
    await page.fill('#ab-clean', CLEAN);
    const rep = await ablateVia('neuron-ablate', { body: { prompt: PROMPT, units: nunit, mode: 'replace', clean: CLEAN }, label: /^replace from the clean prompt: p\(target\)/ });
    const repCli = JSON.parse(cli(['ablate', STORIES, '-p', PROMPT, '--units', nunit[0], '--mode', 'replace', '--clean', CLEAN, '--json']));
    assert.deepStrictEqual(rep.after, repCli.after);
    assert.strictEqual(Number(await page.locator('#neuron-ablate-result').getAttribute('data-after')), repCli.after.prob);
    assert.ok(rep.after.prob !== rep.before.prob, 'patching from the clean prompt changes p(target)');
    // A clean prompt of another length: the server's 400 message in the page.
    await page.fill('#ab-clean', 'Once upon a time, there was a dog named Tim. Tim had a big red');
    const bad = page.waitForResponse((r) => r.url().endsWith('/api/ablate'));
    await page.click('#neuron-ablate');
    assert.strictEqual((await bad).status(), 400);
    await page.waitForSelector('#neuron-ablate-result .error');
    assert.match(await page.textContent('#neuron-ablate-result .error'), /clean prompt has 20 tokens but the prompt has 21/);

    // Add the head's own vector, scale 2 (the default) then -1.5.
    await page.selectOption('#ab-mode', 'add');
    assert.strictEqual(await page.textContent('#head-ablate'), 'ablate (add)');
    const hunit = ['h:' + worst.id];
    const add = await ablateVia('head-ablate', { body: { prompt: PROMPT, units: hunit, mode: 'add', scale: 2 }, label: /^add ×2: p\(target\)/ });
    assert.strictEqual(add.scale, 2);
    await page.fill('#ab-scale', '-1.5');
    await ablateVia('head-ablate', { body: { prompt: PROMPT, units: hunit, mode: 'add', scale: -1.5 }, label: /^add ×-1\.5: p\(target\)/ });
    await page.locator('#neurons').screenshot({ path: 'browser-serve-ablate-modes.png' });
    await page.selectOption('#ab-mode', 'zero');
    page.off('request', countAblate);

    // An attention neuron: its id (L_H_N_J) goes as it is.
    const a0 = json.attn_neurons[0];
    await page.click(`#attn-table tr[data-id="${a0.id}"]`);
    await page.waitForSelector('#neuron-ablate');
    const nb = page.waitForResponse((r) => r.url().endsWith('/api/ablate'));
    await page.click('#neuron-ablate');
    const nresp = await nb;
    assert.strictEqual(JSON.parse(nresp.request().postData()).mode, 'zero');
    const nshown = await nresp.json();
    assert.deepStrictEqual(nshown.units, [a0.id]);
    await page.waitForSelector('#neuron-ablate-result .after');
    assert.strictEqual(Number(await page.locator('#neuron-ablate-result').getAttribute('data-after')), nshown.after.prob);

    // The "compare scores" box: the comparison panel, 8 methods + original + random.
    assert.ok(await page.locator('#compare').isHidden());
    await page.check('#f-compare');
    await page.click('#f-go');
    await page.waitForSelector('#compare-chart', { timeout: 60000 });
    assert.strictEqual(await page.locator('#compare-table tbody tr').count(), 10);
    assert.strictEqual(await page.locator('#compare-chart .bar.cmp-prob').count(), 10);
    await page.uncheck('#f-compare');

    // A bad request shows the server's message, and the server stays up.
    await page.fill('#f-target', 'not one token at all');
    await page.click('#f-go');
    await page.waitForSelector('.error');
    assert.match(await page.textContent('.error'), /tokens/);
    assert.deepStrictEqual(errors.filter((e) => !/status of 400/.test(e)), []);
  } finally {
    await browser.close();
    srv.proc.kill('SIGTERM');
  }
});

// The stages of /api/explain with compare_scores, numbered 1..11 (the
// report's, then the web extras').
const STAGES = ['forward pass', 'contexts', 'layer table', 'heads', 'head x positions and neurons',
  'query layers', 'scoring-method comparison', 'report', 'lens grid', 'head details', 'neuron details'];
// 24 times PROMPT: 482 tokens; with compare scores about 1 s here.
const LONG = Array(24).fill(PROMPT).join(' ');

test('resid serve: the status shows the progress of a long request', async () => {
  const srv = await startServer(['--max-tokens', '512']);
  const { browser, page, errors } = await launch();
  try {
    await page.goto(srv.url);
    // Every text the status shows, in order.
    await page.evaluate(() => {
      const st = document.getElementById('status');
      window.statusLog = [];
      new MutationObserver(() => window.statusLog.push(st.textContent)).observe(st, { childList: true, characterData: true, subtree: true });
    });
    await page.fill('#f-prompt', LONG);
    await page.check('#f-compare');
    const explain = async () => {
      await page.evaluate(() => { window.statusLog = []; });
      await page.click('#f-go');
      await page.waitForFunction(() => /\(\d+\/\d+\) · |done in/.test(document.getElementById('status').textContent), null, { timeout: 120000 });
      if (!/done in/.test(await page.textContent('#status'))) await page.locator('header').screenshot({ path: 'browser-serve-progress.png' });
      await page.waitForFunction(() => /done in/.test(document.getElementById('status').textContent), null, { timeout: 120000 });
      return page.evaluate(() => window.statusLog);
    };

    // The page's own stages: retried if the request ended before a poll.
    let stages = [];
    for (let attempt = 0; attempt < 3 && !stages.length; attempt++) {
      const log = await explain();
      stages = log.map((t) => /^(.+) \((\d+)\/(\d+)\) · \d+\.\d s$/.exec(t)).filter(Boolean);
      console.log(`# attempt ${attempt}: ${log.length} status texts; stages shown: ${[...new Set(stages.map((m) => m[1]))].join(', ')}; last: ${log[log.length - 1]}`);
    }
    assert.ok(stages.length > 0, 'a stage was shown while the request ran');
    for (const [, name, step, n] of stages) {
      assert.strictEqual(Number(n), STAGES.length);
      assert.strictEqual(name, STAGES[Number(step) - 1]);
    }
    assert.match(await page.textContent('#status'), /^done in \d+\.\d\d s$/);
    assert.strictEqual(await page.locator('#compare-table tbody tr').count(), 10);

    // Behind another client's request (no id): "waiting for another request".
    let waited = false;
    for (let attempt = 0; attempt < 3 && !waited; attempt++) {
      const other = fetch(srv.url + 'api/explain', { method: 'POST', body: JSON.stringify({ prompt: LONG, compare_scores: true }) });
      for (let busy = false; !busy;) busy = (await (await fetch(srv.url + 'api/progress')).json()).busy;
      await page.evaluate(() => { window.statusLog = []; });
      await page.click('#f-go');
      await page.waitForFunction(() => /waiting for another request|done in/.test(document.getElementById('status').textContent), null, { timeout: 120000 });
      if (/waiting/.test(await page.textContent('#status'))) await page.locator('header').screenshot({ path: 'browser-serve-waiting.png' });
      await page.waitForFunction(() => /done in/.test(document.getElementById('status').textContent), null, { timeout: 120000 });
      assert.strictEqual((await other).status, 200);
      const log = await page.evaluate(() => window.statusLog);
      waited = log.some((t) => /^waiting for another request · \d+\.\d s$/.test(t));
      console.log(`# behind another request: waiting shown ${waited}; then ${[...new Set(log.map((t) => t.replace(/ · .*/, '')))].slice(0, 6).join(' | ')} …`);
    }
    assert.ok(waited, 'the page said it was waiting for another request');
    const p = await (await fetch(srv.url + 'api/progress')).json();
    assert.deepStrictEqual(p, { busy: false, waiting: 0 });
    assert.deepStrictEqual(errors, []);
  } finally {
    await browser.close();
    srv.proc.kill('SIGTERM');
  }
});
