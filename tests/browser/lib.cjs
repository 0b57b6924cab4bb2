// lib.cjs - shared helpers of the browser tests: launch the system's
// headless Chromium through playwright-core, collect console errors, run
// the resid CLI.
'use strict';
const { chromium } = require('playwright-core');
const { execFileSync } = require('node:child_process');
const path = require('node:path');

const CLI = process.env.RESID_CLI || path.resolve('resid');
const MODELS = process.env.RESID_MODELS || path.resolve(__dirname, '../../../shared/models');
const CHROMIUM = process.env.RESID_CHROMIUM || '/usr/bin/chromium';
const STORIES = path.join(MODELS, 'tinyllamas/stories260K.bin');
const PROMPT = 'Once upon a time, there was a boy named Tim. Tim had a big red';

async function launch() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push('console: ' + m.text()); });
  page.on('pageerror', (e) => errors.push('pageerror: ' + e.message));
  // Nothing may leave the machine: any request that is not file: or the
  // local server fails the test.
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith('file:') && !u.startsWith('http://127.0.0.1:') && !u.startsWith('data:'))
      errors.push('external request: ' + u);
  });
  return { browser, page, errors };
}

function cli(args, opts) {
  return execFileSync(CLI, args, Object.assign({ encoding: 'utf8', maxBuffer: 64 << 20 }, opts));
}

module.exports = { launch, cli, CLI, MODELS, STORIES, PROMPT };
