// tuneforge built-in dashboard: jobs list and a job page with live curves and events.
// Vanilla JS, no dependencies. The API key stays in this browser and is sent as a bearer token;
// live events come from the SSE route read through fetch (EventSource cannot send headers).
(() => {
  'use strict';

  const KEY = 'tuneforge.apiKey';
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const MAX_EVENTS_SHOWN = 400;
  const $ = (id) => document.getElementById(id);

  // ---------- API key ----------
  const getKey = () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || '';
  function setKey(key, remember) {
    forgetKey();
    (remember ? localStorage : sessionStorage).setItem(KEY, key);
  }
  function forgetKey() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const response = await fetch(path, { headers: { Authorization: 'Bearer ' + getKey() } });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) throw new Unauthorized((body.error && body.error.message) || 'unauthorized');
    if (!response.ok) throw new Error((body.error && body.error.message) || 'HTTP ' + response.status);
    return body;
  }

  function handleError(err) {
    if (err instanceof Unauthorized) {
      forgetKey();
      showLogin('The service refused this API key: ' + err.message);
      return true;
    }
    console.error(err);
    return false;
  }

  // ---------- small helpers ----------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const svgEl = (tag, attrs) => {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  };
  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  function fmtNum(v, digits = 4) {
    if (!isNum(v)) return '–';
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) return v.toExponential(2);
    return Number(v.toFixed(digits)).toString();
  }
  function fmtEta(s) {
    if (!isNum(s)) return '–';
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + 'h ' : '') + String(m).padStart(h ? 2 : 1, '0') + 'm ' + String(sec).padStart(2, '0') + 's';
  }
  function fmtBytes(b) {
    if (!isNum(b)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return b.toFixed(i ? 1 : 0) + ' ' + units[i];
  }
  const fmtTime = (t) => (isNum(t) ? new Date(t * 1000).toLocaleString() : '–');
  const shortModel = (m) => (m || '').split('/').filter(Boolean).pop() || m || '–';
  const methodOf = (job) => (job.method && job.method.type) || 'supervised';

  function statusBadge(node, status) {
    node.textContent = status || '';
    node.className = 'status status-' + (status || 'unknown');
  }

  // ---------- views and routing ----------
  const views = ['login', 'jobs-view', 'job-view', 'feedback-view', 'round-view', 'playground-view'];
  let cleanup = [];
  function show(id) {
    for (const v of views) $(v).hidden = v !== id;
    const hasKey = !!getKey();
    $('forget-key').hidden = !hasKey;
    $('key-state').textContent = hasKey ? 'API key set' : '';
  }
  function stopAll() {
    for (const fn of cleanup) fn();
    cleanup = [];
  }

  function route() {
    stopAll();
    if (!getKey()) return showLogin('');
    const m = /^#\/jobs\/([^/?]+)/.exec(location.hash);
    if (m) return showJob(decodeURIComponent(m[1]));
    if (location.hash.startsWith('#/playground')) return showPlayground();
    const r = /^#\/feedback\/([^/?]+)\/rounds\/([^/?]+)/.exec(location.hash);
    if (r) return showRound(decodeURIComponent(r[1]), decodeURIComponent(r[2]));
    if (location.hash.startsWith('#/feedback')) return showFeedback();
    return showJobs();
  }

  function showLogin(message) {
    stopAll();
    show('login');
    $('login-error').textContent = message || '';
    $('api-key').focus();
  }

  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = $('api-key').value.trim();
    if (!key) return;
    setKey(key, $('remember').checked);
    try {
      await api('/v1/fine_tuning/jobs?limit=1');
      $('api-key').value = '';
      route();
    } catch (err) {
      if (!handleError(err)) $('login-error').textContent = String(err.message || err);
    }
  });
  $('forget-key').addEventListener('click', () => { forgetKey(); showLogin('API key forgotten.'); });
  window.addEventListener('hashchange', route);

  // ---------- jobs list ----------
  function jobRow(job) {
    const p = job.progress || {};
    const pct = isNum(p.step) && isNum(p.total_steps) && p.total_steps > 0 ? Math.min(100, 100 * p.step / p.total_steps) : (job.status === 'succeeded' ? 100 : 0);
    const badge = el('span');
    statusBadge(badge, job.status);
    const bar = el('div', { class: 'bar' });
    bar.style.width = pct.toFixed(1) + '%';  // CSSOM, not a style attribute: the page's CSP forbids those
    return el('tr', { 'data-job-id': job.id },
      el('td', null, el('a', { href: '#/jobs/' + encodeURIComponent(job.id) }, job.id)),
      el('td', { title: job.model }, shortModel(job.model)),
      el('td', null, methodOf(job)),
      el('td', null, badge),
      el('td', null,
        el('div', { class: 'mini-progress' }, bar),
        el('span', { class: 'small muted' }, isNum(p.step) ? p.step + (isNum(p.total_steps) ? '/' + p.total_steps : '') : '')),
      el('td', null, fmtNum(p.train_loss)),
      el('td', { class: 'small' }, fmtTime(job.created_at)));
  }

  function showJobs() {
    show('jobs-view');
    let pages = 1;
    let timer = null;
    let stopped = false;
    async function load() {
      try {
        const rows = [];
        let after = null;
        let hasMore = false;
        for (let i = 0; i < pages; i++) {
          const page = await api('/v1/fine_tuning/jobs?limit=50' + (after ? '&after=' + encodeURIComponent(after) : ''));
          rows.push(...page.data);
          hasMore = page.has_more;
          if (!hasMore || !page.data.length) break;
          after = page.data[page.data.length - 1].id;
        }
        if (stopped) return;
        $('jobs-body').replaceChildren(...rows.map(jobRow));
        $('jobs-empty').hidden = rows.length > 0;
        $('jobs-more').hidden = !hasMore;
        $('jobs-updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      } catch (err) {
        if (handleError(err)) return;
        $('jobs-updated').textContent = 'error: ' + err.message;
      }
      if (!stopped) timer = setTimeout(load, 5000);
    }
    const more = () => { pages += 1; clearTimeout(timer); load(); };
    $('jobs-more').addEventListener('click', more);
    cleanup.push(() => { stopped = true; clearTimeout(timer); $('jobs-more').removeEventListener('click', more); });
    load();
  }

  // ---------- feedback campaigns and rounds of the loop ----------
  const roundHref = (round) => '#/feedback/' + encodeURIComponent(round.campaign_id) + '/rounds/' + encodeURIComponent(round.id);
  const jobLink = (id) => id ? el('a', { href: '#/jobs/' + encodeURIComponent(id) }, id) : el('span', { class: 'muted' }, '–');

  function showFeedback() {
    show('feedback-view');
    let timer = null;
    let stopped = false;
    async function load() {
      try {
        const campaigns = (await api('/v1/feedback_campaigns?limit=100&order=desc')).data;
        const cards = [];
        for (const c of campaigns) {
          const rounds = (await api('/v1/feedback_campaigns/' + encodeURIComponent(c.id) + '/rounds?limit=100')).data;
          const badge = el('span');
          statusBadge(badge, c.status);
          const p = c.progress || {};
          cards.push(el('div', { class: 'card campaign-card', 'data-campaign-id': c.id },
            el('h3', null, c.name + ' ', badge),
            el('p', { class: 'muted small' }, c.kind + ' · ' + c.models.join(', ') + ' · ' + (p.labelled_items || 0) + '/' +
              (p.items || 0) + ' items labelled · ' + c.id),
            rounds.length ? el('ul', { class: 'rounds' }, ...rounds.map((round) => {
              const b = el('span');
              statusBadge(b, round.status);
              return el('li', null, el('a', { href: roundHref(round) }, round.id), ' ', b, ' ', el('span', { class: 'muted small' }, round.step));
            })) : el('p', { class: 'muted small' }, 'No rounds yet.')));
        }
        if (stopped) return;
        $('feedback-body').replaceChildren(...cards);
        $('feedback-empty').hidden = campaigns.length > 0;
        $('feedback-updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      } catch (err) {
        if (handleError(err)) return;
        $('feedback-updated').textContent = 'error: ' + err.message;
      }
      if (!stopped) timer = setTimeout(load, 5000);
    }
    cleanup.push(() => { stopped = true; clearTimeout(timer); });
    load();
  }

  function showRound(campaignId, roundId) {
    show('round-view');
    let timer = null;
    let stopped = false;
    $('round-title').textContent = roundId;
    $('round-body').replaceChildren();
    async function jobState(id) {
      if (!id) return '';
      const job = await api('/v1/fine_tuning/jobs/' + encodeURIComponent(id));
      return job.status + (job.fine_tuned_model ? ' → ' + job.fine_tuned_model : '');
    }
    async function load() {
      try {
        const round = await api('/v1/feedback_campaigns/' + encodeURIComponent(campaignId) + '/rounds/' + encodeURIComponent(roundId));
        const rm = await jobState(round.reward_model_job_id);
        const rl = await jobState(round.reinforcement_job_id);
        let next = '';
        if (round.next_campaign_id) {
          const c = await api('/v1/feedback_campaigns/' + encodeURIComponent(round.next_campaign_id));
          next = c.name + ': ' + c.status;
        }
        if (stopped) return;
        statusBadge($('round-status'), round.status);
        $('round-subtitle').textContent = 'from campaign ' + round.campaign_id + ' · step ' + round.step + ' · ' +
          round.reinforcement.algorithm + ' on ' + round.reinforcement.model;
        const evals = round.reinforcement_job_id && round.evals.length
          ? el('a', { href: '#/jobs/' + encodeURIComponent(round.reinforcement_job_id) }, 'base vs tuned on the job\'s page')
          : el('span', { class: 'muted' }, round.evals.length ? '–' : 'no evals asked');
        $('round-body').replaceChildren(
          el('tr', null, el('td', null, 'Export of the agreed labels'), el('td', null, el('code', null, round.export_file_id)), el('td', null, 'done')),
          el('tr', { 'data-step': 'reward_model' }, el('td', null, 'Reward model'), el('td', null, jobLink(round.reward_model_job_id)), el('td', null, rm)),
          el('tr', { 'data-step': 'reinforcement' }, el('td', null, 'Reinforcement (' + round.reinforcement.algorithm + ')'), el('td', null, jobLink(round.reinforcement_job_id)), el('td', null, rl)),
          el('tr', { 'data-step': 'evaluation' }, el('td', null, 'Base vs tuned'), el('td', null, evals), el('td', null, round.eval_report ? 'see the report' : '')),
          el('tr', { 'data-step': 'next_campaign' }, el('td', null, 'Next campaign'), el('td', null, round.next_campaign_id ? el('code', null, round.next_campaign_id) : el('span', { class: 'muted' }, round.next_campaign ? '–' : 'none asked')), el('td', null, next)));
        $('round-error').textContent = round.error ? round.error.message : '';
        if (round.status === 'running') timer = setTimeout(load, 3000);
      } catch (err) {
        if (!handleError(err)) $('round-error').textContent = 'error: ' + err.message;
      }
    }
    cleanup.push(() => { stopped = true; clearTimeout(timer); });
    load();
  }

  // ---------- SSE over fetch ----------
  // Calls onEvent(event object) for every job event, onEnd(status) at the end; reconnects with
  // Last-Event-ID after network errors. Returns a function that stops it.
  function streamEvents(jobId, onEvent, onEnd, onState) {
    const controller = new AbortController();
    let lastId = null;
    let done = false;
    async function connect() {
      while (!done) {
        try {
          const headers = { Authorization: 'Bearer ' + getKey(), Accept: 'text/event-stream' };
          if (lastId) headers['Last-Event-ID'] = lastId;
          const response = await fetch('/v1/fine_tuning/jobs/' + encodeURIComponent(jobId) + '/events/stream',
            { headers, signal: controller.signal, cache: 'no-store' });
          if (response.status === 401) throw new Unauthorized('unauthorized');
          if (!response.ok || !response.body) throw new Error('HTTP ' + response.status);
          onState('live');
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = '';
          for (;;) {
            const { value, done: eof } = await reader.read();
            if (eof) break;
            buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
            let cut;
            while ((cut = buffer.indexOf('\n\n')) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              const frame = { id: null, event: 'message', data: [] };
              for (const line of block.split('\n')) {
                if (!line || line.startsWith(':')) continue;
                const colon = line.indexOf(':');
                const field = colon < 0 ? line : line.slice(0, colon);
                const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
                if (field === 'id') frame.id = val;
                else if (field === 'event') frame.event = val;
                else if (field === 'data') frame.data.push(val);
              }
              if (!frame.data.length) continue;
              const data = JSON.parse(frame.data.join('\n'));
              if (frame.event === 'end') {
                done = true;
                onEnd(data.status);
                controller.abort();
                return;
              }
              if (frame.id) lastId = frame.id;
              onEvent(data);
            }
          }
        } catch (err) {
          if (done || controller.signal.aborted) return;
          if (err instanceof Unauthorized) { handleError(err); return; }
          onState('reconnecting…');
        }
        if (!done) await new Promise((r) => setTimeout(r, 2000));
      }
    }
    connect();
    return () => { done = true; controller.abort(); };
  }

  // ---------- charts ----------
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
    return ticks;
  }

  // series: [{name, points: [[x, y], ...], dots}]
  function drawChart(svg, series, opts) {
    const width = Math.max(200, svg.clientWidth || 360);
    const height = Math.max(120, svg.clientHeight || 180);
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const all = series.flatMap((s) => s.points);
    svg.dataset.points = String(all.length);
    if (!all.length) {
      svg.append(Object.assign(svgEl('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'empty' }),
        { textContent: opts.empty || 'waiting for metrics…' }));
      return;
    }
    const m = { l: 56, r: 12, t: 10, b: 24 };
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
    y0 -= pad; y1 += pad;
    if (opts.zeroBased && y0 < 0 && Math.min(...all.map((p) => p[1])) >= 0) y0 = 0;
    const sx = (x) => m.l + (x - x0) / (x1 - x0) * (width - m.l - m.r);
    const sy = (y) => height - m.b - (y - y0) / (y1 - y0) * (height - m.t - m.b);
    const grid = svgEl('g', { class: 'grid' });
    for (const t of niceTicks(y0, y1, 4)) {
      grid.append(svgEl('line', { x1: m.l, x2: width - m.r, y1: sy(t), y2: sy(t) }));
      grid.append(Object.assign(svgEl('text', { x: m.l - 6, y: sy(t) + 4, 'text-anchor': 'end' }), { textContent: fmtNum(t, 3) }));
    }
    for (const t of niceTicks(x0, x1, Math.max(2, Math.floor(width / 110)))) {
      if (opts.integerX && !Number.isInteger(t)) continue;
      grid.append(svgEl('line', { x1: sx(t), x2: sx(t), y1: m.t, y2: height - m.b, class: 'v' }));
      grid.append(Object.assign(svgEl('text', { x: sx(t), y: height - 6, 'text-anchor': 'middle' }), { textContent: fmtNum(t, 2) }));
    }
    svg.append(grid);
    for (const s of series) {
      if (!s.points.length) continue;
      const pts = [...s.points].sort((a, b) => a[0] - b[0]);
      const d = pts.map((p, i) => (i ? 'L' : 'M') + sx(p[0]).toFixed(1) + ' ' + sy(p[1]).toFixed(1)).join(' ');
      svg.append(svgEl('path', { d, class: 'series series-' + s.name, 'data-points': String(pts.length) }));
      if (s.dots || pts.length <= 40) {
        for (const p of pts) {
          const dot = svgEl('circle', { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.6, class: 'dot dot-' + s.name });
          dot.append(Object.assign(svgEl('title'), { textContent: `step ${p[0]}: ${fmtNum(p[1], 5)}` }));
          svg.append(dot);
        }
      }
    }
  }

  // ---------- job page ----------
  function showJob(jobId) {
    show('job-view');
    const points = { train: new Map(), valid: new Map(), tps: new Map(), lr: new Map() };
    let job = null;
    let drawPending = false;
    let refreshTimer = null;
    let stopped = false;
    $('events').replaceChildren();
    $('eval-report').hidden = true;
    $('eval-report-body').replaceChildren();
    $('job-title').textContent = jobId;
    $('job-subtitle').textContent = '';
    $('stream-state').textContent = 'connecting…';
    statusBadge($('job-status'), '');
    updateStats({});

    function updateStats(p) {
      $('stat-step').textContent = isNum(p.step) ? p.step + (isNum(p.total_steps) ? ' / ' + p.total_steps : '') : '–';
      $('stat-train-loss').textContent = fmtNum(p.train_loss);
      $('stat-valid-loss').textContent = fmtNum(p.valid_loss);
      $('stat-lr').textContent = fmtNum(p.learning_rate, 8);
      $('stat-tps').textContent = isNum(p.tokens_per_second) ? p.tokens_per_second.toFixed(1) : '–';
      $('stat-eta').textContent = job && TERMINAL.has(job.status) ? '–' : fmtEta(p.eta_seconds);
      $('stat-tokens').textContent = isNum(p.trained_tokens) ? p.trained_tokens.toLocaleString() : '–';
      $('stat-gpu').textContent = fmtBytes(p.gpu_memory_bytes);
      const pct = isNum(p.step) && isNum(p.total_steps) && p.total_steps > 0 ? Math.min(100, 100 * p.step / p.total_steps) : 0;
      $('job-bar').style.width = (job && job.status === 'succeeded' ? 100 : pct).toFixed(1) + '%';
    }

    // the job's evals (base vs tuned): asked again whenever the job or one of its eval runs changes
    async function refreshEvals() {
      if (!job || !job.evals || !job.evals.length) { $('eval-report').hidden = true; return; }
      try {
        const report = await api('/v1/fine_tuning/jobs/' + encodeURIComponent(jobId) + '/eval_report');
        if (!stopped) renderEvalReport(report);
      } catch (err) {
        if (!handleError(err)) $('eval-report-body').textContent = 'error: ' + err.message;
      }
    }

    function renderEvalReport(report) {
      $('eval-report').hidden = false;
      const pct = (v) => (100 * v).toFixed(1) + '%';
      const signed = (v, f) => (v > 0 ? '+' : '') + f(v);
      const interval = (c, f) => signed(c.difference, f) + ' [' + signed(c.ci_low, f) + ', ' + signed(c.ci_high, f) + ']';
      const score = (v) => v.toFixed(3);
      const body = report.evals.map((ev) => {
        const head = el('h3', null, (ev.eval_name || ev.eval_id));
        if (ev.error) return el('div', { class: 'card eval-card' }, head, el('p', { class: 'error' }, ev.error));
        const state = ['base', 'tuned'].map((role) => {
          const run = ev[role + '_run'];
          return role + ': ' + (run ? run.status + ' (' + (run.result_counts.total || 0) + ' items)' : 'waiting for the job');
        }).join(' · ');
        const c = ev.comparison;
        if (!c) return el('div', { class: 'card eval-card' }, head, el('p', { class: 'muted' }, state));
        const rows = [['all criteria (pass rate)', c.pass_rate, pct]].concat(c.per_testing_criteria.flatMap((k) => [
          [k.testing_criteria + ' (pass rate)', k.pass_rate, pct],
          [k.testing_criteria + ' (mean score)', k.mean_score, score]]));
        const table = el('table', { class: 'eval-table' },
          el('thead', null, el('tr', null, el('th', null, 'criterion'), el('th', null, 'base'), el('th', null, 'tuned'),
            el('th', null, 'tuned − base [' + Math.round(100 * c.confidence) + '% CI]'))),
          el('tbody', null, ...rows.map(([name, v, f]) => el('tr', { class: v.ci_low > 0 ? 'better' : (v.ci_high < 0 ? 'worse' : '') },
            el('td', null, name), el('td', null, f(v.base)), el('td', null, f(v.tuned)), el('td', null, interval(v, f))))));
        const items = el('details', { class: 'eval-items' }, el('summary', null, 'Items where the models differ most (' + c.most_different_items.length + ')'),
          ...c.most_different_items.map((it) => el('div', { class: 'eval-item' },
            el('pre', { class: 'item' }, JSON.stringify(it.item)),
            el('div', { class: 'eval-outputs' },
              el('figure', null, el('figcaption', null, 'base · ' + it.base.status), el('pre', null, it.base.output_text)),
              el('figure', null, el('figcaption', null, 'tuned · ' + it.tuned.status), el('pre', null, it.tuned.output_text))))));
        return el('div', { class: 'card eval-card' }, head,
          el('p', { class: 'muted small' }, state + ' · ' + c.items + ' paired items, bootstrap ' + c.resamples + ' resamples'),
          table, items);
      });
      $('eval-report-body').replaceChildren(...body);
    }

    function renderJob() {
      if (!job) return;
      statusBadge($('job-status'), job.status);
      const bits = [shortModel(job.model), methodOf(job), 'created ' + fmtTime(job.created_at)];
      if (job.fine_tuned_model) bits.push('→ ' + job.fine_tuned_model);
      if (job.error && job.error.message) bits.push('error: ' + job.error.message);
      $('job-subtitle').textContent = bits.join(' · ');
      updateStats(job.progress || {});
    }

    async function refreshJob() {
      try {
        job = await api('/v1/fine_tuning/jobs/' + encodeURIComponent(jobId));
        if (!stopped) { renderJob(); refreshEvals(); }
      } catch (err) {
        if (!handleError(err)) $('job-subtitle').textContent = 'error: ' + err.message;
      }
    }
    function scheduleRefresh() {
      if (refreshTimer) return;
      refreshTimer = setTimeout(() => { refreshTimer = null; refreshJob(); }, 1000);
    }

    function scheduleDraw() {
      if (drawPending) return;
      drawPending = true;
      requestAnimationFrame(() => {
        drawPending = false;
        if (stopped) return;
        const arr = (map) => [...map.entries()];
        drawChart($('loss-chart'), [
          { name: 'train', points: arr(points.train) },
          { name: 'valid', points: arr(points.valid), dots: true },
        ], { integerX: true });
        drawChart($('tps-chart'), [{ name: 'tps', points: arr(points.tps) }], { integerX: true, zeroBased: true });
        drawChart($('lr-chart'), [{ name: 'lr', points: arr(points.lr) }], { integerX: true, zeroBased: true });
      });
    }

    function addEventRow(ev) {
      const list = $('events');
      const row = el('li', { class: 'level-' + ev.level + ' type-' + ev.type, 'data-event-id': ev.id },
        el('time', null, new Date(ev.created_at * 1000).toLocaleTimeString()),
        el('span', { class: 'msg' }, ev.message));
      list.prepend(row);
      while (list.childElementCount > MAX_EVENTS_SHOWN) list.lastElementChild.remove();
    }

    function onEvent(ev) {
      addEventRow(ev);
      const d = ev.data || {};
      if (ev.type === 'metrics' && isNum(d.step)) {
        if (isNum(d.train_loss)) points.train.set(d.step, d.train_loss);
        if (isNum(d.valid_loss)) points.valid.set(d.step, d.valid_loss);
        if (isNum(d.tokens_per_second)) points.tps.set(d.step, d.tokens_per_second);
        if (isNum(d.learning_rate)) points.lr.set(d.step, d.learning_rate);
        if (job) {
          job.progress = Object.assign({}, job.progress, d);
          updateStats(job.progress);
        }
        scheduleDraw();
      }
      if (d.status || d.run_id) scheduleRefresh();
    }

    const stopStream = streamEvents(jobId, onEvent, (status) => {
      $('stream-state').textContent = 'job ' + status + ' · stream closed';
      refreshJob();
    }, (s) => { $('stream-state').textContent = s; });
    const onResize = () => scheduleDraw();
    window.addEventListener('resize', onResize);
    cleanup.push(() => {
      stopped = true;
      stopStream();
      clearTimeout(refreshTimer);
      window.removeEventListener('resize', onResize);
    });
    refreshJob().then(scheduleDraw);
  }


  // ---------- playground ----------
  // Streams one chat completion into a pane; returns a function that stops it.
  function streamCompletion(body, onDelta, onDone, onError) {
    const controller = new AbortController();
    (async () => {
      const started = performance.now();
      let first = null, usage = null, finish = null;
      try {
        const response = await fetch('/v1/chat/completions', {
          method: 'POST', signal: controller.signal, cache: 'no-store',
          headers: { Authorization: 'Bearer ' + getKey(), 'Content-Type': 'application/json' },
          body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
        });
        if (response.status === 401) throw new Unauthorized('unauthorized');
        if (!response.ok || !response.body) {
          const err = await response.json().catch(() => ({}));
          throw new Error((err.error && err.error.message) || 'HTTP ' + response.status);
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let cut;
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('');
            if (!data || data === '[DONE]') continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message || 'the engine failed');
            if (chunk.usage) usage = chunk.usage;
            for (const choice of chunk.choices || []) {
              if (choice.delta && choice.delta.content) {
                if (first === null) first = performance.now();
                onDelta(choice.delta.content);
              }
              if (choice.finish_reason) finish = choice.finish_reason;
            }
          }
        }
        const seconds = (performance.now() - (first || started)) / 1000;
        onDone({ usage, finish, ttft: first === null ? null : (first - started) / 1000, seconds });
      } catch (err) {
        if (controller.signal.aborted) return;
        if (err instanceof Unauthorized) { handleError(err); return; }
        onError(String(err.message || err));
      }
    })();
    return () => controller.abort();
  }

  let playModels = null;
  async function showPlayground() {
    show('playground-view');
    try {
      if (!playModels) playModels = (await api('/v1/models')).data.filter((m) => m.engine);
    } catch (err) {
      if (!handleError(err)) $('play-error').textContent = String(err.message || err);
      return;
    }
    for (const [id, pick] of [['play-model-a', 0], ['play-model-b', 1]]) {
      const select = $(id);
      if (select.options.length) continue;
      for (const m of playModels) select.append(el('option', { value: m.id }, m.id));
      // default: the base model on the left, the newest tuned model on the right
      const tuned = playModels.filter((m) => m.kind === 'fine-tuned');
      const wanted = pick === 1 && tuned.length ? tuned[tuned.length - 1].id : (playModels[0] || {}).id;
      if (wanted) select.value = wanted;
    }
  }

  $('play-form').addEventListener('submit', (e) => {
    e.preventDefault();
    $('play-error').textContent = '';
    const messages = [];
    const system = $('play-system').value.trim();
    if (system) messages.push({ role: 'system', content: system });
    messages.push({ role: 'user', content: $('play-prompt').value });
    const common = { messages, max_tokens: Number($('play-max-tokens').value) || 128,
      temperature: Number($('play-temperature').value) || 0 };
    let running = 2;
    const stops = [];
    const finished = () => { if (--running === 0) { $('play-send').disabled = false; $('play-stop').hidden = true; } };
    $('play-send').disabled = true;
    $('play-stop').hidden = false;
    for (const side of ['a', 'b']) {
      const model = $('play-model-' + side).value;
      const out = $('play-out-' + side), stats = $('play-stats-' + side);
      $('play-title-' + side).textContent = model;
      out.textContent = '';
      stats.textContent = 'waiting for the engine…';
      stops.push(streamCompletion({ ...common, model }, (text) => { out.textContent += text; }, (r) => {
        const tokens = r.usage ? r.usage.completion_tokens : null;
        const parts = [];
        if (tokens !== null) parts.push(tokens + ' tokens');
        if (r.finish) parts.push('finish: ' + r.finish);
        if (r.ttft !== null) parts.push('first token ' + r.ttft.toFixed(2) + ' s');
        if (tokens && r.seconds > 0) parts.push((tokens / r.seconds).toFixed(1) + ' tokens/s');
        stats.textContent = parts.join(' · ');
        finished();
      }, (message) => { stats.textContent = ''; out.textContent = ''; $('play-error').textContent = model + ': ' + message;
        finished(); }));
    }
    const stopAllStreams = () => { for (const stop of stops) stop(); $('play-send').disabled = false;
      $('play-stop').hidden = true; };
    $('play-stop').onclick = stopAllStreams;
    cleanup.push(stopAllStreams);
  });

  route();
})();