/*
 * app.js - the resid front end: renders an explain report (the JSON of
 * `resid explain --json`, docs/explain-json.md, plus lens_grid,
 * head_details and neuron_details) as plain HTML and SVG. No libraries, no
 * network except the page's own /api/* in `resid serve`.
 *
 * Two modes: a report file embeds the JSON in a script element with id
 * "resid-data";
 * the served page (resid serve) has none and shows a form that POSTs to
 * /api/explain (docs/serve.md).
 */
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const app = document.getElementById('app');
  let R = null;        /* the report shown */
  let request = null;  /* live mode: the request that produced it */

  /* ---- DOM helpers ---------------------------------------------------- */

  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const k of kids.flat()) if (k != null) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG, tag);
    setAttrs(e, attrs);
    for (const k of kids.flat()) if (k != null) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
  }
  const $ = (id) => document.getElementById(id);
  const fmt = (x, d = 3) => (x == null || Number.isNaN(x) ? '–' : Number(x).toFixed(d));
  const sgn = (x, d = 3) => (x == null ? '–' : (x >= 0 ? '+' : '') + Number(x).toFixed(d));
  const pct = (p) => (p == null ? '–' : (100 * p).toPrecision(3) + '%');

  /* Token text as shown: visible whitespace, id when there is no text. */
  function tokText(t) {
    if (!t) return '?';
    if (t.text == null) return '#' + t.id;
    return t.text.replace(/ /g, '\u2423').replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5') || '\u2205';
  }
  function tok(t, cls) {
    return h('span', { class: 'tok ' + (cls || ''), title: 'id ' + t.id + (t.bytes ? ', bytes ' + t.bytes : '') }, tokText(t));
  }

  /* Sequential colour for p in [0,1] (white -> deep blue), and a diverging
   * one for a signed value against its largest magnitude (red - / blue +). */
  function seq(p) {
    const t = Math.max(0, Math.min(1, Math.sqrt(p || 0)));
    const c0 = [247, 251, 255], c1 = [8, 48, 107];
    return 'rgb(' + c0.map((a, i) => Math.round(a + (c1[i] - a) * t)).join(',') + ')';
  }
  function div(v, max) {
    const t = max > 0 ? Math.max(-1, Math.min(1, v / max)) : 0;
    const a = Math.abs(t), base = 250;
    const c = t >= 0 ? [33, 102, 172] : [178, 24, 43];
    return 'rgb(' + c.map((x) => Math.round(base + (x - base) * a)).join(',') + ')';
  }
  const scoreKey = () => (R.score === 'contrast' ? 'contrast' : 'lpi');

  function section(id, title, note, ...body) {
    return h('section', { id, class: 'panel' }, h('h2', null, title), note ? h('p', { class: 'note' }, note) : null, ...body);
  }

  /* Floating tooltip for SVG cells. */
  const tip = h('div', { id: 'tip', hidden: true });
  document.body.append(tip);
  function showTip(ev, html) {
    tip.replaceChildren(...html);
    tip.hidden = false;
    tip.style.left = ev.pageX + 12 + 'px';
    tip.style.top = ev.pageY + 12 + 'px';
  }
  const hideTip = () => { tip.hidden = true; };

  /* ---- Summary ---------------------------------------------------------- */

  function summary() {
    const m = R.model, t = R.target;
    const toks = h('div', { class: 'tokens', id: 'prompt-tokens' },
      R.tokens.map((x, i) => h('span', { class: 'tokwrap' }, h('sub', null, i), tok(x))));
    const tgt = h('p', { class: 'target' }, 'target ', tok(t, 'big'), ' ',
      h('span', { id: 'target-prob' }, 'p = ' + fmt(t.prob, 4)), ' in the ', h('b', null, R.lens),
      ' lens; the model: p = ' + fmt(t.model_prob, 4));
    const kids = [h('p', { class: 'model' }, h('b', null, m.name), ` ${m.arch}, ${m.n_layer} layers × ${m.n_head} heads, ${m.d_ffn} FFN neurons per layer, vocabulary ${m.n_vocab}`),
      toks, tgt];
    if (R.contrast) {
      const c = R.contrast;
      kids.push(h('p', { class: 'target' }, 'vs ', tok(c, 'big'), ' p = ' + fmt(c.prob, 4) + '; log p(w) − log p(c): ' +
        fmt(c.logit_diff_initial) + ' → ' + fmt(c.logit_diff_final) + ' (' + sgn(c.total) + ')'));
    }
    const lt = R.layer_totals;
    kids.push(h('p', { class: 'note' }, `log p(target): ${fmt(lt.logp_initial)} at the embedding → ${fmt(lt.logp_final)} at x_L; ` +
      `attention ${sgn(lt.attn_lpi)} + FFN ${sgn(lt.ffn_lpi)} = ${sgn(lt.total)} nats. Units scored by ${R.score} in the ${R.unit_lens} lens.`));
    return section('summary', 'Prediction', null, ...kids);
  }

  /* ---- Logit-lens heat map ---------------------------------------------- */

  function lensGrid() {
    const g = R.lens_grid;
    if (!g) return section('lens', 'Logit lens', 'No lens grid in this report (needs resid explain --html or resid serve).');
    const rows = g.rows, T = rows[0].cells.length, cw = 46, ch = 16, left = 70, top = 4;
    const W = left + T * cw + 4, H = top + rows.length * ch + 70;
    const svg = s('svg', { width: W, height: H, id: 'lens-grid', class: 'chart' });
    /* x_L on top, x_in[0] at the bottom: the stream flows upwards. */
    rows.slice().reverse().forEach((row, ri) => {
      const y = top + ri * ch;
      svg.append(s('text', { x: left - 4, y: y + ch - 4, class: 'lab', 'text-anchor': 'end' }, row.name));
      row.cells.forEach((c, t) => {
        const pos = g.pos_first + t;
        const r = s('rect', { x: left + t * cw, y, width: cw - 1, height: ch - 1, fill: seq(c.p), class: 'cell' });
        r.addEventListener('mousemove', (ev) => showTip(ev, [
          h('div', null, h('b', null, row.name), ' at position ' + pos + ' (', tok(R.tokens[pos]), ')'),
          h('div', null, 'p(target) = ' + fmt(c.p, 4) + ', rank ' + (c.rank + 1)),
          h('div', null, 'top-1 ', tok(c.top1), ' p = ' + fmt(c.p_top1, 4))]));
        r.addEventListener('mouseleave', hideTip);
        svg.append(r);
        if (c.p >= 0.5 || c.rank === 0)
          svg.append(s('text', { x: left + t * cw + cw / 2, y: y + ch - 4, class: 'celltext', 'text-anchor': 'middle', fill: c.p > 0.3 ? '#fff' : '#000' }, c.rank === 0 ? '★' : ''));
      });
    });
    const yl = top + rows.length * ch + 4;
    R.tokens.slice(g.pos_first).forEach((x, t) => svg.append(
      s('text', { x: left + t * cw + cw / 2, y: yl, class: 'lab tokl', transform: `rotate(40 ${left + t * cw + cw / 2} ${yl})` }, tokText(x).slice(0, 10))));
    const part = g.pos_first > 0 ? ` This report has the last ${T === 1 ? 'position' : T + ' positions'} only: resid explain --html-positions 0 (or resid serve) gives every one.` : '';
    return section('lens', 'Logit lens: p(target) per layer and position',
      `${g.lens} lens; rows are residuals (x_in = before attention, x_mid = before the FFN), darker = higher p(target), ★ = the target is top-1. Hover a cell for its top token.${part}`,
      h('div', { class: 'scroll' }, svg));
  }

  /* ---- Layer bar chart -------------------------------------------------- */

  function layerChart() {
    const L = R.layers.length, bw = 14, gap = 8, left = 48, top = 12, ph = 200;
    const vals = R.layers.flatMap((l) => R.score === 'contrast' ? [l.attn_contrast, l.ffn_contrast] : [l.attn_lpi, l.ffn_lpi]);
    const lt = R.layer_totals;
    const run = [lt.logp_initial].concat(R.layers.map((l) => lt.logp_initial + l.cum_lpi));
    const max = Math.max(1e-9, ...vals.map(Math.abs));
    const W = left + L * (2 * bw + gap) + 60, Hh = top + ph + 40;
    const y0 = top + ph / 2, sc = (ph / 2 - 4) / max;
    const svg = s('svg', { width: W, height: Hh, id: 'layer-chart', class: 'chart' });
    svg.append(s('line', { x1: left, x2: W - 50, y1: y0, y2: y0, class: 'axis' }));
    svg.append(s('text', { x: left - 6, y: top + 8, class: 'lab', 'text-anchor': 'end' }, sgn(max, 2)));
    svg.append(s('text', { x: left - 6, y: top + ph, class: 'lab', 'text-anchor': 'end' }, sgn(-max, 2)));
    R.layers.forEach((l, i) => {
      const x = left + i * (2 * bw + gap);
      [['attn', vals[2 * i]], ['ffn', vals[2 * i + 1]]].forEach(([k, v], j) => {
        const hgt = Math.abs(v) * sc;
        const b = s('rect', { x: x + j * bw, y: v >= 0 ? y0 - hgt : y0, width: bw - 1, height: Math.max(hgt, 0.5), class: 'bar ' + k, 'data-layer': i, 'data-kind': k },
          s('title', null, `layer ${i} ${k === 'attn' ? 'attention' : 'FFN'}: ${R.score} ${sgn(v, 4)}`));
        svg.append(b);
      });
      svg.append(s('text', { x: x + bw, y: top + ph + 14, class: 'lab', 'text-anchor': 'middle' }, i));
    });
    /* Running log-probability on a right-hand axis. */
    const lo = Math.min(...run), hi = Math.max(...run), span = Math.max(hi - lo, 1e-9);
    const py = (v) => top + ph - ((v - lo) / span) * (ph - 8) - 4;
    const pts = run.map((v, i) => `${left + i * (2 * bw + gap) - gap / 2},${py(v)}`).join(' ');
    svg.append(s('polyline', { points: pts, class: 'runline', id: 'logp-line' }));
    run.forEach((v, i) => svg.append(s('circle', { cx: left + i * (2 * bw + gap) - gap / 2, cy: py(v), r: 2.5, class: 'runpt' },
      s('title', null, `log p(target) after ${i} layers: ${fmt(v, 4)}`))));
    svg.append(s('text', { x: W - 46, y: py(hi) + 4, class: 'lab run' }, fmt(hi, 2)));
    svg.append(s('text', { x: W - 46, y: py(lo) + 4, class: 'lab run' }, fmt(lo, 2)));
    return section('layers', 'Layers', `Bars: ${R.score === 'contrast' ? 'contrast (change of log p(w) − log p(c))' : 'LPI (log-probability increase, nats)'} of each layer's attention (blue) and FFN (orange) output; line: log p(target) along the residual stream (right scale).`,
      h('div', { class: 'scroll' }, svg));
  }

  /* ---- Heads ------------------------------------------------------------ */

  function headMap() {
    const L = R.model.n_layer, H = R.model.n_head, cw = 26, ch = 18, left = 40, top = 18;
    const key = scoreKey();
    const max = Math.max(1e-9, ...R.heads.map((x) => Math.abs(x[key])));
    const svg = s('svg', { width: left + H * cw + 10, height: top + L * ch + 6, id: 'head-map', class: 'chart' });
    for (let hd = 0; hd < H; hd++) svg.append(s('text', { x: left + hd * cw + cw / 2, y: top - 5, class: 'lab', 'text-anchor': 'middle' }, hd));
    R.heads.forEach((x) => {
      const y = top + x.layer * ch;
      if (x.head === 0) svg.append(s('text', { x: left - 5, y: y + ch - 5, class: 'lab', 'text-anchor': 'end' }, 'L' + x.layer));
      const r = s('rect', { x: left + x.head * cw, y, width: cw - 2, height: ch - 2, fill: div(x[key], max), class: 'head-cell', 'data-id': x.id, tabindex: 0 },
        s('title', null, `head ${x.id}: ${key} ${sgn(x[key], 4)}`));
      r.addEventListener('click', () => openHead(x.layer, x.head));
      r.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') openHead(x.layer, x.head); });
      svg.append(r);
    });
    return section('heads', 'Attention heads', `Layers × heads coloured by ${key} (blue raises the target, red lowers it). Click a head for its source positions, attention and tokens.`,
      h('div', { class: 'split' }, h('div', { class: 'scroll' }, svg), h('div', { id: 'head-detail', class: 'detail' }, h('p', { class: 'muted' }, 'Click a head.'))));
  }

  async function openHead(layer, head) {
    document.querySelectorAll('.head-cell.sel').forEach((e) => e.classList.remove('sel'));
    const cell = document.querySelector(`.head-cell[data-id="${layer}_${head}"]`);
    if (cell) cell.classList.add('sel');
    const box = document.getElementById('head-detail');
    let d = (R.head_details || []).find((x) => x.layer === layer && x.head === head);
    if ((!d || !d.positions) && request) {
      const st = h('p', { class: 'muted' }, 'computing…');
      box.replaceChildren(st);
      try { d = await api('/api/head', Object.assign({}, request, { layer, head }), st); } catch (e) { box.replaceChildren(errBox(e)); return; }
    }
    const sc = R.heads.find((x) => x.layer === layer && x.head === head);
    const kids = [h('h3', null, `Head ${layer}_${head}`), h('p', null, `${scoreKey()} ${sgn(sc[scoreKey()], 4)}, direct logit of the target ${sgn(sc.bs_target)}`),
      ablateButton([`h:${layer}_${head}`], 'head-ablate')];
    if (d && d.attention) {
      const a = d.attention, amax = Math.max(...a, 1e-9);
      kids.push(h('h4', null, 'Attention from the last position'),
        h('div', { class: 'tokens attn' }, R.tokens.map((t, j) => h('span', { class: 'tokwrap', title: `α = ${fmt(a[j], 4)}` },
          h('span', { class: 'tok', style: `background:${seq(a[j] / amax * 0.8)};color:${a[j] / amax > 0.5 ? '#fff' : '#000'}` }, tokText(t))))));
    }
    if (d && d.positions) {
      const key = scoreKey(), ps = d.positions, max = Math.max(1e-9, ...ps.map((p) => Math.abs(p[key])));
      const bw = 22, ph = 90, y0 = ph / 2 + 6;
      const svg = s('svg', { width: ps.length * bw + 10, height: ph + 60, class: 'chart', id: 'head-pos-chart' });
      svg.append(s('line', { x1: 0, x2: ps.length * bw, y1: y0, y2: y0, class: 'axis' }));
      ps.forEach((p, j) => {
        const hh = Math.abs(p[key]) / max * (ph / 2 - 4);
        svg.append(s('rect', { x: j * bw + 2, y: p[key] >= 0 ? y0 - hh : y0, width: bw - 3, height: Math.max(hh, 0.5), class: 'bar hp', fill: div(p[key], max) },
          s('title', null, `${d.id}_${p.pos} ${tokText(p.source)}: ${key} ${sgn(p[key], 4)}, α ${fmt(p.coef, 4)}`)));
        svg.append(s('text', { x: j * bw + bw / 2, y: ph + 14, class: 'lab tokl', transform: `rotate(50 ${j * bw + bw / 2} ${ph + 14})` }, tokText(p.source).slice(0, 8)));
      });
      kids.push(h('h4', null, `Head × source position (${key})`), h('div', { class: 'scroll' }, svg));
      kids.push(h('h4', null, 'Tokens the head pushes'), tokRow('up', d.top_tokens), tokRow('down', d.bottom_tokens));
    } else {
      kids.push(h('p', { class: 'muted' }, 'Position breakdown and tokens are in this report for the best heads only; resid serve computes any head.'));
    }
    box.replaceChildren(...kids.filter((k) => k != null));
  }

  function tokRow(label, list) {
    return h('div', { class: 'tokrow' }, h('span', { class: 'muted' }, label + ' '), (list || []).map((t) => tok(t)));
  }

  /* ---- Unit tables ------------------------------------------------------ */

  function unitTable(list, cols, onRow, id) {
    const key = scoreKey();
    const head = h('tr', null, h('th', null, '#'), h('th', null, 'unit'), cols.map((c) => h('th', null, c[0])), h('th', null, key), h('th', null, 'Δp'));
    const rows = list.map((u, i) => {
      const tr = h('tr', { 'data-id': u.id, class: onRow ? 'click' : '' }, h('td', null, i + 1), h('td', null, h('code', null, u.id)),
        cols.map((c) => h('td', null, c[1](u))), h('td', { class: 'num' }, sgn(u[key], 4)), h('td', { class: 'num' }, sgn(u.prob_inc, 4)));
      if (onRow) tr.addEventListener('click', () => { document.querySelectorAll(`#${id} tr.sel`).forEach((e) => e.classList.remove('sel')); tr.classList.add('sel'); onRow(u); });
      return tr;
    });
    return h('table', { id, class: 'units' }, h('thead', null, head), h('tbody', null, rows));
  }
  const toks = (u, k) => h('span', null, (u[k] || []).map((t) => tok(t)));

  function neurons() {
    const ffn = unitTable(R.ffn_neurons, [['coef', (u) => fmt(u.coef)], ['top tokens', (u) => toks(u, 'top_tokens')], ['bottom tokens', (u) => toks(u, 'bottom_tokens')]], openNeuron, 'ffn-table');
    const attn = unitTable(R.attn_neurons, [['source', (u) => tok(u.source)], ['coef', (u) => fmt(u.coef)], ['top tokens', (u) => toks(u, 'top_tokens')], ['bottom tokens', (u) => toks(u, 'bottom_tokens')]], openNeuron, 'attn-table');
    return section('neurons', 'Neurons', 'Top FFN neurons (L_K) and attention neurons (L_H_N_J) with their coefficient and the tokens their output row pushes up/down (a negative coefficient swaps the two). Click a neuron for the layers and lower neurons that activate it.',
      h('h3', null, 'FFN neurons'), ffn, h('h3', null, 'Attention neurons'), attn, h('div', { id: 'neuron-detail', class: 'detail' }));
  }

  async function openNeuron(u) {
    const box = document.getElementById('neuron-detail');
    let d = R.neuron_details && R.neuron_details[u.id];
    if (!d && request) {
      const st = h('p', { class: 'muted' }, 'computing…');
      box.replaceChildren(st);
      const body = Object.assign({}, request, { layer: u.layer });
      if (u.neuron != null) body.neuron = u.neuron; else Object.assign(body, { head: u.head, dim: u.dim, pos: u.pos });
      try { d = await api('/api/neuron', body, st); } catch (e) { box.replaceChildren(errBox(e)); return; }
    }
    if (!d) {
      box.replaceChildren(h('p', { class: 'muted' }, `No details for ${u.id} in this report: it has them for the first neurons of each list only (resid explain --html-neurons N sets how many; resid serve computes any neuron).`));
      return;
    }
    const kids = [h('h3', null, `Neuron ${u.id}`), h('p', null, `coefficient ${fmt(u.coef, 4)}; its input is read at position ${d.pos} (`, tok(R.tokens[d.pos]), ')'),
      ablateButton([u.neuron != null ? 'n:' + u.id : u.id], 'neuron-ablate')];
    for (const k of d.keys) {
      kids.push(h('h4', null, `Query layers: pre-activation of the ${k.key} key = ${fmt(k.pre)} split by residual piece`));
      kids.push(slotChart(k.slots.map((x) => [x.slot, x.share]), 'neuron-query-chart'));
      if (k.mean_term || k.bias_term) kids.push(h('p', { class: 'note' }, `+ mean term ${sgn(k.mean_term)} + bias ${sgn(k.bias_term)}`));
    }
    const q = d.query_neurons || [];
    kids.push(h('h4', null, 'Query neurons: lower FFN neurons with the largest share of it'));
    kids.push(q.length ? h('table', { class: 'units', id: 'query-neurons' }, h('tr', null, h('th', null, 'neuron'), h('th', null, 'coef'), h('th', null, 'contribution')),
      q.map((x) => h('tr', null, h('td', null, h('code', null, x.id)), h('td', { class: 'num' }, fmt(x.coef, 4)), h('td', { class: 'num' }, sgn(x.contribution, 4)))))
      : h('p', { class: 'muted' }, 'none (layer 0)'));
    box.replaceChildren(...kids.filter((k) => k != null));
  }

  /* Bars over residual slots (emb, a0, f0, ...). */
  function slotChart(pairs, id) {
    const bw = 26, ph = 110, y0 = ph / 2 + 6, max = Math.max(1e-9, ...pairs.map((p) => Math.abs(p[1])));
    const svg = s('svg', { width: pairs.length * bw + 10, height: ph + 24, class: 'chart slots', id });
    svg.append(s('line', { x1: 0, x2: pairs.length * bw, y1: y0, y2: y0, class: 'axis' }));
    pairs.forEach(([lab, v], j) => {
      const hh = Math.abs(v) / max * (ph / 2 - 4);
      svg.append(s('rect', { x: j * bw + 2, y: v >= 0 ? y0 - hh : y0, width: bw - 3, height: Math.max(hh, 0.5), class: 'bar slot ' + (lab[0] === 'a' ? 'attn' : lab[0] === 'f' ? 'ffn' : 'emb') },
        s('title', null, `${lab}: ${sgn(v, 4)}`)));
      svg.append(s('text', { x: j * bw + bw / 2, y: ph + 18, class: 'lab', 'text-anchor': 'middle' }, lab));
    });
    return h('div', { class: 'scroll' }, svg);
  }

  function headPositions() {
    return section('head-positions', 'Head × source position', 'The best head × source-position units: how much each head moved the target through one source token.',
      unitTable(R.head_positions, [['source', (u) => tok(u.source)], ['α', (u) => fmt(u.coef)], ['top tokens', (u) => toks(u, 'top_tokens')]], null, 'hp-table'));
  }

  function queryLayers() {
    const q = R.query_layers || [];
    if (!q.length) return section('query', 'Query layers', (R.query && R.query.error) || 'not computed');
    const gated = q[0].gate_share != null;
    const kids = [slotChart(q.map((x) => [x.slot, gated ? x.up_share + x.gate_share : x.share]), 'query-chart')];
    const qi = R.query || {};
    return section('query', 'Query layers of the top FFN neurons',
      `The top ${qi.n_value} FFN neurons' LPI (sum ${fmt(qi.lpi_sum)}) shared among the lower residual pieces by their inner product with each neuron's ${qi.key} key${gated ? ' (up + gate shares)' : ''}; mean layer ${fmt(qi.mean_layer, 2)}.`, ...kids);
  }

  /* ---- Scoring-method comparison ------------------------------------- */

  /* Present only when ablations were run (resid explain --compare-scores):
   * R.score_compare = {k, seed, target, lens, original, methods[8], random},
   * each row {name, letter?, units?, prob, logprob, rank, rr, model_*}. */
  function compare() {
    const c = R.score_compare;
    const sec = section('compare', 'Scoring methods compared', null);
    if (!c || !Array.isArray(c.methods)) { sec.hidden = true; return sec; }
    const rows = [{ kind: 'original', ...c.original }].concat(c.methods.map((m) => ({ kind: 'method', ...m })), [{ kind: 'random', ...c.random }]);
    const gw = 46, bw = 16, left = 40, top = 10, ph = 180, Wd = left + rows.length * gw + 90, Hh = top + ph + 70;
    const y = (v) => top + ph - Math.max(0, Math.min(1, v || 0)) * ph;
    const svg = s('svg', { width: Wd, height: Hh, id: 'compare-chart', class: 'chart' });
    [0, 0.25, 0.5, 0.75, 1].forEach((v) => {
      svg.append(s('line', { x1: left, x2: left + rows.length * gw, y1: y(v), y2: y(v), class: v ? 'grid' : 'axis' }));
      svg.append(s('text', { x: left - 5, y: y(v) + 4, class: 'lab', 'text-anchor': 'end' }, v.toFixed(2)));
    });
    rows.forEach((m, i) => {
      const x = left + i * gw + (gw - 2 * bw) / 2;
      [['prob', m.prob, 'p(target)'], ['rr', m.rr, 'MRR']].forEach(([k, v, lab], j) =>
        svg.append(s('rect', { x: x + j * bw, y: y(v), width: bw - 2, height: Math.max(ph * Math.max(0, Math.min(1, v || 0)), 0.5), class: `bar cmp-${k} ${m.kind}`, 'data-method': m.name },
          s('title', null, `${m.name}: ${lab} ${fmt(v, 4)} (rank ${m.rank})`))));
      const lx = left + i * gw + gw / 2, ly = top + ph + 12;
      svg.append(s('text', { x: lx, y: ly, class: 'lab', 'text-anchor': 'start', transform: `rotate(35 ${lx} ${ly})` }, (m.letter ? m.letter + ' ' : '') + m.name));
    });
    /* Reference lines: the unablated model and the random neurons. */
    [['original', c.original], ['random', c.random]].forEach(([name, r]) => {
      const ry = y(r.prob);
      svg.append(s('line', { x1: left, x2: left + rows.length * gw, y1: ry, y2: ry, class: 'ref ' + name, 'data-ref': name }));
      svg.append(s('text', { x: left + rows.length * gw + 4, y: ry + (name === 'random' && Math.abs(c.random.prob - c.original.prob) < 0.06 ? 12 : 0) + 4, class: 'lab ref-lab' }, `${name} p ${fmt(r.prob, 3)}`));
    });
    const legend = h('p', { class: 'note' }, h('span', { class: 'key cmp-prob' }), ' p(target) after zeroing  ', h('span', { class: 'key cmp-rr' }), ' MRR (1/rank)  ',
      h('span', { class: 'key ref' }), ' dashed: p(target) of the original model (black) and with the random neurons zeroed (red)');
    const table = h('table', { class: 'units', id: 'compare-table' },
      h('thead', null, h('tr', null, ['', 'method', 'p(target)', 'log p', 'MRR', 'rank', 'model p', 'neurons zeroed'].map((x) => h('th', null, x)))),
      h('tbody', null, rows.map((m) => h('tr', { 'data-method': m.name, class: m.kind },
        h('td', null, m.letter || ''), h('td', null, m.name), h('td', { class: 'num' }, fmt(m.prob, 4)), h('td', { class: 'num' }, fmt(m.logprob, 3)),
        h('td', { class: 'num' }, fmt(m.rr, 4)), h('td', { class: 'num' }, m.rank), h('td', { class: 'num' }, fmt(m.model_prob, 4)),
        h('td', null, m.units ? h('code', { title: m.units.join(' ') }, m.units.slice(0, 5).join(' ') + (m.units.length > 5 ? ' …' : '')) : '–')))));
    sec.append(h('p', { class: 'note' }, `The top ${c.k} FFN neurons by each of the ${c.methods.length} scores (METHOD.md §3.5) zeroed at every position, and ${c.k} random neurons (seed ${c.seed}); the target afterwards in the ${c.lens} lens. Lower = the score found more important neurons.`),
      legend, h('div', { class: 'scroll' }, svg), table);
    return sec;
  }

  /* ---- Ablation (resid serve only) -------------------------------------- */

  /* The mode every ablate button uses, chosen in one shared control under
   * the request form (#ablate-opts, built by live(): a report file has no
   * server, so neither the control nor the buttons exist there). The
   * modes are those of /api/ablate (docs/serve.md): zero; mean over
   * reference prompts; replace (activation patching) from a clean prompt
   * of the same length; add the unit's own vector at t*, scaled, to x_L. */
  const MAX_MEAN_PROMPTS = 16;   /* the server's limit (cmd_serve.c) */

  function ablateOptions() {
    const field = (mode, ...kids) => h('label', { class: 'ab-field', 'data-mode': mode, hidden: true }, ...kids);
    const fields = [
      field('mean', 'reference prompts, one per line (1 to ' + MAX_MEAN_PROMPTS + ') ',
        h('textarea', { id: 'ab-mean', rows: 3, cols: 60, placeholder: 'Lily went to the park\nThe cat sat on the mat' })),
      field('replace', 'clean prompt (as many tokens as the prompt) ',
        h('input', { id: 'ab-clean', size: 60, placeholder: 'Once upon a time, there was a girl named Tim. Tim had a big red' })),
      field('add', 'scale ', h('input', { id: 'ab-scale', type: 'number', step: 'any', value: 2 }),
        h('span', { class: 'muted' }, " × the unit's own vector at t*, added to x_L")),
    ];
    const select = h('select', { id: 'ab-mode', onchange: () => {
      for (const f of fields) f.hidden = f.dataset.mode !== select.value;
      for (const b of document.querySelectorAll('button.ablate')) b.textContent = `ablate (${select.value})`;
    } }, ['zero', 'mean', 'replace', 'add'].map((m) => h('option', null, m)));
    return h('div', { id: 'ablate-opts', class: 'row' }, h('label', null, 'ablate buttons: mode ', select), ...fields);
  }

  /* The chosen mode as /api/ablate fields and a label for the result;
   * throws an Error naming what to fix when the fields are not valid. */
  function ablateMode() {
    const mode = $('ab-mode').value;
    if (mode === 'mean') {
      const prompts = $('ab-mean').value.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => l.trim());
      if (!prompts.length) throw new Error('mode mean: type 1 to ' + MAX_MEAN_PROMPTS + ' reference prompts, one per line');
      if (prompts.length > MAX_MEAN_PROMPTS)
        throw new Error(`mode mean: at most ${MAX_MEAN_PROMPTS} reference prompts, one per line; there are ${prompts.length}`);
      return { fields: { mode, mean_prompts: prompts }, label: `mean over ${prompts.length} prompt${prompts.length > 1 ? 's' : ''}` };
    }
    if (mode === 'replace') {
      const clean = $('ab-clean').value;
      if (!clean.trim()) throw new Error('mode replace: type the clean prompt, with as many tokens as the prompt');
      return { fields: { mode, clean }, label: 'replace from the clean prompt' };
    }
    if (mode === 'add') {
      const scale = $('ab-scale').valueAsNumber;
      if (!Number.isFinite(scale)) throw new Error('mode add: the scale must be a number');
      return { fields: { mode, scale }, label: `add ×${scale}` };
    }
    return { fields: { mode: 'zero' }, label: 'zero' };
  }

  /* A button that ablates `units` (ids in the resid ablate syntax) in the
   * chosen mode through /api/ablate and shows p(target) before -> after.
   * Only in the served page. */
  function ablateButton(units, id) {
    if (!request) return null;
    const out = h('span', { class: 'ablate-result', id: id + '-result', role: 'status' });
    const btn = h('button', {
      type: 'button', class: 'ablate', id, title: 'ablate ' + units.join(', ') + ' in the mode chosen under the form (resid ablate)',
      onclick: async () => {
        delete out.dataset.before; delete out.dataset.after; delete out.dataset.mode;
        let m;
        try { m = ablateMode(); } catch (e) { out.replaceChildren(errBox(e)); return; }
        btn.disabled = true;
        const st = h('span', { class: 'muted' }, 'computing…');
        out.replaceChildren(st);
        try {
          const a = await api('/api/ablate', Object.assign({}, request, { units }, m.fields), st);
          out.dataset.mode = a.mode;
          out.dataset.before = a.before.prob;
          out.dataset.after = a.after.prob;
          out.replaceChildren(h('span', { class: 'ablate-mode' }, m.label), ': p(target) ', h('b', { class: 'before' }, fmt(a.before.prob, 4)), ' → ', h('b', { class: 'after' }, fmt(a.after.prob, 4)),
            ` (${sgn(a.after.prob - a.before.prob, 4)}; rank ${a.before.rank} → ${a.after.rank}; paper lens; the model: ${fmt(a.before.model_prob, 4)} → ${fmt(a.after.model_prob, 4)})`);
        } catch (e) {
          out.replaceChildren(errBox(e));
        } finally {
          btn.disabled = false;
        }
      },
    }, `ablate (${$('ab-mode').value})`);
    return h('p', { class: 'ablate-row' }, btn, ' ', out);
  }

  /* ---- Rendering -------------------------------------------------------- */

  function render(report) {
    R = report;
    app.replaceChildren(summary(), layerChart(), lensGrid(), headMap(), neurons(), headPositions(), queryLayers(), compare());
    document.title = 'resid explain: ' + tokText(R.target);
  }

  function errBox(e) {
    return h('div', { class: 'error', role: 'alert' }, String(e.message || e));
  }

  /* ---- Live mode (resid serve) ------------------------------------------ */

  /* POSTs body to path; with an element `shown`, shows the request's
   * progress in it meanwhile (showProgress). */
  async function api(path, body, shown) {
    const headers = { 'Content-Type': 'application/json' };
    let stop = null;
    if (shown) {
      headers['X-Resid-Request'] = Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
      stop = showProgress(shown, headers['X-Resid-Request']);
    }
    try {
      const r = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body) });
      let j;
      try { j = await r.json(); } catch (e) { throw new Error(`${path}: HTTP ${r.status}, not JSON`); }
      if (!r.ok) throw new Error(j.error || `${path}: HTTP ${r.status}`);
      return j;
    } finally {
      if (stop) stop();
    }
  }

  /* "head x positions and neurons (5/11) · 1.3 s" in el while request `id` runs: the stage
   * from GET /api/progress, asked every 250 ms; the server names the
   * request that holds it by the id the page sent (X-Resid-Request), so
   * another's computation reads "waiting for another request". Returns
   * the function that stops it. */
  function showProgress(el, id) {
    const t0 = performance.now();
    let label = 'computing…', stopped = false, timer = null;
    const draw = () => { if (!stopped) el.textContent = `${label} · ${((performance.now() - t0) / 1000).toFixed(1)} s`; };
    const tick = setInterval(draw, 100);
    async function poll() {
      try {
        const p = await (await fetch('/api/progress', { cache: 'no-store' })).json();
        if (p.busy && p.request === id) label = p.stage ? `${p.stage} (${p.step}/${p.n_steps})` : 'computing…';
        else if (p.busy) label = 'waiting for another request';
      } catch (e) { /* the request itself reports failures */ }
      draw();
      if (!stopped) timer = setTimeout(poll, 250);
    }
    poll();
    return () => { stopped = true; clearInterval(tick); clearTimeout(timer); };
  }

  function live() {
    const form = document.getElementById('ask');
    form.hidden = false;
    form.after(ablateOptions());
    app.replaceChildren(h('p', { class: 'muted' }, 'Type a prompt and press Explain.'));
    const status = document.getElementById('status');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const v = (id) => document.getElementById(id).value;
      const body = { prompt: v('f-prompt'), lens: v('f-lens'), top: Number(v('f-top')) || 10 };
      if (v('f-target')) body.target = v('f-target');
      if (v('f-vs')) body.vs = v('f-vs');
      if (document.getElementById('f-compare').checked) body.compare_scores = true;
      const t0 = performance.now();
      const btn = document.getElementById('f-go');
      btn.disabled = true;
      status.className = 'busy';
      try {
        const rep = await api('/api/explain', body, status);
        request = body;
        render(rep);
        status.textContent = `done in ${((performance.now() - t0) / 1000).toFixed(2)} s`;
      } catch (e) {
        status.textContent = '';
        app.replaceChildren(errBox(e));
      } finally {
        btn.disabled = false;
        status.className = '';
      }
    });
  }

  const data = document.getElementById('resid-data');
  if (data) {
    try { render(JSON.parse(data.textContent)); } catch (e) { app.replaceChildren(errBox(e)); console.error(e); }
  } else {
    live();
  }
})();
