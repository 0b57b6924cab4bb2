// report.test.cjs - the self-contained report of `resid explain --html` in
// headless Chromium: opened from disk, it shows the target, the lens grid
// ((2L+1) x every position on this small model; --html-positions 1: the last one,
// with a note), the layer chart (2L bars), the head map (L x H cells);
// clicking a head and a neuron opens their details (no ablate button nor
// ablation-mode control: no server); the scoring-method comparison is hidden without --compare-scores
// and shows 8 methods + original + random with it; no console errors, no
// network. Screenshots: browser-report*.png in the working directory.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const { launch, cli, STORIES, PROMPT } = require('./lib.cjs');

test('report of stories260K opens from disk and is interactive', async () => {
  const out = path.resolve('browser-report.html');
  const json = JSON.parse(cli(['explain', STORIES, '-p', PROMPT, '--json', '-']));
  cli(['explain', STORIES, '-p', PROMPT, '--html', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  assert.ok(fs.statSync(out).size > 10000);
  const L = json.model.n_layer, H = json.model.n_head, T = json.tokens.length;
  const { browser, page, errors } = await launch();
  try {
    await page.goto('file://' + out);
    await page.waitForSelector('#head-map');
    // The embedded data is the CLI's JSON (plus the extra views).
    const data = await page.evaluate(() => JSON.parse(document.getElementById('resid-data').textContent));
    assert.strictEqual(data.target.id, json.target.id);
    assert.ok(Math.abs(data.target.prob - json.target.prob) < 1e-12);
    const tgt = await page.textContent('#summary .target .tok.big');
    assert.strictEqual(tgt, json.target.text.replace(/ /g, '\u2423'));
    assert.match(await page.textContent('#target-prob'), new RegExp(json.target.prob.toFixed(4)));
    assert.strictEqual(await page.locator('#prompt-tokens .tok').count(), T);
    assert.strictEqual(await page.locator('#head-map .head-cell').count(), L * H);
    assert.strictEqual(await page.locator('#layer-chart .bar').count(), 2 * L);
    assert.strictEqual(await page.locator('#layer-chart .bar.attn').count(), L);
    // explain --html on a model this small: the lens grid covers every position.
    assert.strictEqual(data.lens_grid.pos_first, 0);
    assert.strictEqual(await page.locator('#lens-grid .cell').count(), (2 * L + 1) * T);
    assert.doesNotMatch(await page.textContent('#lens'), /--html-positions/);
    assert.strictEqual(await page.locator('#ffn-table tbody tr').count(), json.ffn_neurons.length);
    assert.strictEqual(await page.locator('#query-chart .bar').count(), 2 * L + 1);
    assert.ok(await page.locator('#compare').isHidden(), 'no ablations: comparison hidden');
    await page.screenshot({ path: 'browser-report.png', fullPage: true });

    // Hover a lens cell: the tooltip names the top-1 token.
    await page.locator('#lens-grid .cell').last().hover();
    assert.match(await page.textContent('#tip'), /top-1/);

    // The best head (by LPI) has details: click it.
    const best = json.heads.slice().sort((a, b) => b.lpi - a.lpi)[0];
    await page.click(`#head-map .head-cell[data-id="${best.id}"]`);
    assert.match(await page.textContent('#head-detail h3'), new RegExp('Head ' + best.id));
    assert.strictEqual(await page.locator('#head-pos-chart .bar').count(), T);
    assert.strictEqual(await page.locator('#head-detail .attn .tok').count(), T);
    await page.locator('#heads').screenshot({ path: 'browser-report-head.png' });

    // A neuron: its query layers and query neurons.
    const n0 = json.ffn_neurons[json.ffn_neurons.findIndex((n) => n.layer > 0)];
    await page.click(`#ffn-table tr[data-id="${n0.id}"]`);
    assert.match(await page.textContent('#neuron-detail h3'), new RegExp('Neuron ' + n0.id));
    assert.strictEqual(await page.locator('#neuron-detail #neuron-query-chart').first().locator('.bar').count(), 2 * n0.layer + 2);
    assert.ok(await page.locator('#query-neurons tr').count() > 1);
    // An attention neuron too.
    const a0 = json.attn_neurons[0];
    await page.click(`#attn-table tr[data-id="${a0.id}"]`);
    assert.match(await page.textContent('#neuron-detail h3'), new RegExp('Neuron ' + a0.id));
    await page.locator('#neurons').screenshot({ path: 'browser-report-neuron.png' });
    // A report file has no server: no ablate button in the detail panels,
    // and no ablation-mode control.
    assert.strictEqual(await page.locator('button.ablate').count(), 0);
    assert.strictEqual(await page.locator('#ablate-opts, #ab-mode').count(), 0);
    assert.deepStrictEqual(errors, []);
  } finally {
    await browser.close();
  }
});

test('a trimmed report (what larger models get by default) says what it left out', async () => {
  const out = path.resolve('browser-report-trimmed.html');
  const json = JSON.parse(cli(['explain', STORIES, '-p', PROMPT, '--json', '-']));
  cli(['explain', STORIES, '-p', PROMPT, '--html', out, '--html-positions', '2', '--html-heads', '1',
    '--html-neurons', '1'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  const L = json.model.n_layer, T = json.tokens.length;
  const { browser, page, errors } = await launch();
  try {
    await page.goto('file://' + out);
    await page.waitForSelector('#head-map');
    const data = await page.evaluate(() => JSON.parse(document.getElementById('resid-data').textContent));
    assert.strictEqual(data.lens_grid.pos_first, T - 2);
    assert.strictEqual(await page.locator('#lens-grid .cell').count(), (2 * L + 1) * 2);
    assert.match(await page.textContent('#lens'), /last 2 positions only: resid explain --html-positions 0/);
    assert.strictEqual(data.head_details.filter((d) => d.positions).length, 1);
    // The best head has its breakdown; the second best points to resid serve.
    const [best, second] = json.heads.slice().sort((a, b) => b.lpi - a.lpi);
    await page.click(`#head-map .head-cell[data-id="${best.id}"]`);
    assert.strictEqual(await page.locator('#head-pos-chart .bar').count(), T);
    await page.click(`#head-map .head-cell[data-id="${second.id}"]`);
    assert.match(await page.textContent('#head-detail h3'), new RegExp('Head ' + second.id));
    assert.strictEqual(await page.locator('#head-pos-chart').count(), 0);
    assert.match(await page.textContent('#head-detail'), /best heads only; resid serve computes any head/);
    assert.strictEqual(await page.locator('#head-detail .attn .tok').count(), T);
    // Neurons: the first of each list has its details, the second says how to get them.
    assert.deepStrictEqual(Object.keys(data.neuron_details).sort(),
      [json.ffn_neurons[0].id, json.attn_neurons[0].id].sort());
    await page.click(`#ffn-table tr[data-id="${json.ffn_neurons[0].id}"]`);
    assert.ok(await page.locator('#query-neurons tr').count() > 1);
    await page.click(`#ffn-table tr[data-id="${json.ffn_neurons[1].id}"]`);
    assert.match(await page.textContent('#neuron-detail'), /No details for .* --html-neurons N/);
    assert.deepStrictEqual(errors, []);
  } finally {
    await browser.close();
  }
});

test('report with --compare-scores shows the scoring-method comparison', async () => {
  const out = path.resolve('browser-report-compare.html');
  const json = JSON.parse(cli(['explain', STORIES, '-p', PROMPT, '--compare-scores', '--json', '-']));
  cli(['explain', STORIES, '-p', PROMPT, '--compare-scores', '--html', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  const c = json.score_compare;
  assert.strictEqual(c.methods.length, 8);
  const { browser, page, errors } = await launch();
  try {
    await page.goto('file://' + out);
    await page.waitForSelector('#compare-chart');
    assert.ok(await page.locator('#compare').isVisible(), 'comparison shown');
    // 8 methods + original + random, in that order, with the JSON's values.
    const rows = [c.original].concat(c.methods, [c.random]);
    const names = ['original', 'lpi', 'logp-alone', 'prob-inc', 'norm', 'coef', 'rank', 'coef-norm', 'coef-rank', 'random'];
    assert.deepStrictEqual(rows.map((r) => r.name), names);
    const trs = page.locator('#compare-table tbody tr');
    assert.strictEqual(await trs.count(), 10);
    assert.deepStrictEqual(await trs.evaluateAll((rs) => rs.map((r) => r.dataset.method)), names);
    for (let i = 0; i < 10; i++) {
      const cells = await trs.nth(i).locator('td').allTextContents();
      assert.strictEqual(cells[2], rows[i].prob.toFixed(4), names[i] + ' prob');
      assert.strictEqual(cells[4], rows[i].rr.toFixed(4), names[i] + ' MRR');
      assert.strictEqual(Number(cells[5]), rows[i].rank, names[i] + ' rank');
    }
    // The chart: a p(target) bar and an MRR bar per row, bar heights
    // proportional to the values; the original and random reference lines.
    assert.strictEqual(await page.locator('#compare-chart .bar.cmp-prob').count(), 10);
    assert.strictEqual(await page.locator('#compare-chart .bar.cmp-rr').count(), 10);
    assert.strictEqual(await page.locator('#compare-chart .bar.method').count(), 16);
    const hts = await page.locator('#compare-chart .bar.cmp-rr').evaluateAll((bs) => bs.map((b) => Number(b.getAttribute('height'))));
    const ratio = hts[0] / rows[0].rr;
    rows.forEach((r, i) => assert.ok(Math.abs(hts[i] - Math.max(ratio * r.rr, 0.5)) < 1e-6, names[i] + ' MRR bar height'));
    assert.deepStrictEqual(await page.locator('#compare-chart line.ref').evaluateAll((ls) => ls.map((l) => l.dataset.ref)), ['original', 'random']);
    const ys = await page.locator('#compare-chart line.ref').evaluateAll((ls) => ls.map((l) => Number(l.getAttribute('y1'))));
    const pys = await page.locator('#compare-chart .bar.cmp-prob').evaluateAll((bs) => bs.map((b) => Number(b.getAttribute('y'))));
    assert.ok(Math.abs(ys[0] - pys[0]) < 1e-6 && Math.abs(ys[1] - pys[9]) < 1e-6, 'reference lines at the original and random p');
    await page.locator('#compare').screenshot({ path: 'browser-report-compare.png' });
    assert.deepStrictEqual(errors, []);
  } finally {
    await browser.close();
  }
});
