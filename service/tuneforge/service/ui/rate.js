// The rating page: one item at a time, for a rater key (pasted in, or in the URL fragment: #key=…&campaign=…).
// Every piece of data comes from the rating API with that key; answers are text (never HTML).
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const KEY = 'tuneforge.rater.key';
  const CAMPAIGN = 'tuneforge.rater.campaign';
  let item = null;
  let choice = null;      // pairwise/ab: shown index or 'tie'; score: a number; ranking: list of shown indices

  function readFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    if (params.get('key')) sessionStorage.setItem(KEY, params.get('key'));
    if (params.get('campaign')) sessionStorage.setItem(CAMPAIGN, params.get('campaign'));
    if (params.get('key')) {  // keep the key out of the address bar and the history
      history.replaceState(null, '', location.pathname + location.search + '#campaign=' +
        encodeURIComponent(sessionStorage.getItem(CAMPAIGN) || ''));
    }
  }

  async function api(method, path, body) {
    const resp = await fetch(path, {
      method, headers: { Authorization: 'Bearer ' + sessionStorage.getItem(KEY), 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error((data.error && data.error.message) || ('HTTP ' + resp.status));
    return data;
  }

  function show(section) {
    for (const id of ['rate-login', 'rate-view', 'rate-done']) $(id).hidden = id !== section;
    $('rate-forget').hidden = section === 'rate-login';
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function next() {
    $('rate-error').textContent = '';
    const campaign = sessionStorage.getItem(CAMPAIGN);
    let data;
    try {
      data = await api('GET', `/v1/feedback_campaigns/${encodeURIComponent(campaign)}/next_item`);
    } catch (err) {
      $('rate-error').textContent = err.message;
      show('rate-login');
      return;
    }
    const p = data.progress;
    $('rate-progress').textContent =
      `${p.labelled_by_you} rated by you · ${p.fully_labelled_items}/${p.items} items complete`;
    item = data.item;
    if (!item) {
      const waiting = data.status === 'pending' || data.status === 'sampling';
      $('rate-done-title').textContent = waiting ? 'Not ready yet' : 'All done';
      $('rate-done-text').textContent = waiting
        ? 'The models are still writing the answers. Reload this page in a little while.'
        : 'Nothing is left for you to rate in this campaign. Thank you!';
      show('rate-done');
      return;
    }
    $('rate-title').textContent = `${data.campaign_name} · ${data.kind}`;
    render();
    show('rate-view');
  }

  function render() {
    choice = item.kind === 'ranking' ? [] : null;
    $('rate-comment').value = '';
    const prompt = $('rate-prompt');
    prompt.replaceChildren(...item.prompt.map((m) => {
      const row = el('div', 'msg');
      row.append(el('span', 'role', m.role), document.createTextNode(m.content));
      return row;
    }));
    $('rate-answers').replaceChildren(...item.answers.map((a) => {
      const card = el('div', 'answer');
      card.dataset.index = a.index;
      card.append(el('span', 'num', String(a.index + 1)), el('span', 'rank', ''),
                  document.createTextNode(a.text || '(empty answer)'));
      card.addEventListener('click', () => choose(a.index));
      return card;
    }));
    const controls = $('rate-controls');
    controls.replaceChildren();
    if (item.kind === 'score') {
      const { min, max } = item.scale;
      for (let v = Math.ceil(min); v <= Math.floor(max); v++) {
        const b = el('button', '', String(v));
        b.type = 'button';
        b.dataset.score = v;
        b.addEventListener('click', () => choose(v - 1));
        controls.append(b);
      }
      $('rate-help').textContent = `Score the answer from ${min} to ${max}: press its number (1-9), then Enter.`;
    } else if (item.kind === 'ranking') {
      const undo = el('button', '', 'Undo (Backspace)');
      undo.type = 'button';
      undo.addEventListener('click', () => { choice.pop(); paint(); });
      controls.append(undo);
      $('rate-help').textContent = 'Rank the answers: press their numbers best first, then Enter.';
    } else {
      if (item.kind === 'ab') {
        const tie = el('button', '', 'Tie (0)');
        tie.type = 'button';
        tie.id = 'rate-tie';
        tie.addEventListener('click', () => choose('tie'));
        controls.append(tie);
      }
      $('rate-help').textContent = item.kind === 'ab'
        ? 'Which answer is better? Press 1 or 2 (0: a tie), then Enter.'
        : 'Which answer is better? Press its number, then Enter.';
    }
    paint();
  }

  function choose(index) {
    if (!item) return;
    if (item.kind === 'score') {
      const v = index + 1;
      if (v < item.scale.min || v > item.scale.max) return;
      choice = v;
    } else if (item.kind === 'ranking') {
      if (index === 'tie' || index >= item.answers.length || choice.includes(index)) return;
      choice.push(index);
    } else {
      if (index !== 'tie' && index >= item.answers.length) return;
      if (index === 'tie' && item.kind !== 'ab') return;
      choice = index;
    }
    paint();
  }

  function paint() {
    for (const card of $('rate-answers').children) {
      const i = Number(card.dataset.index);
      const rank = item.kind === 'ranking' ? choice.indexOf(i) : -1;
      card.classList.toggle('chosen', item.kind === 'ranking' ? rank >= 0 : item.kind !== 'score' && choice === i);
      card.querySelector('.rank').textContent = rank >= 0 ? `#${rank + 1}` : '';
    }
    for (const b of $('rate-controls').querySelectorAll('button[data-score]')) {
      b.classList.toggle('on', Number(b.dataset.score) === choice);
    }
    const tie = $('rate-tie');
    if (tie) tie.classList.toggle('on', choice === 'tie');
    $('rate-choice').textContent = describe();
  }

  function describe() {
    if (item.kind === 'ranking') return choice.length ? 'Ranking: ' + choice.map((i) => i + 1).join(' > ') : '';
    if (choice === null) return '';
    if (item.kind === 'score') return `Score: ${choice}`;
    return choice === 'tie' ? 'Tie' : `Answer ${choice + 1}`;
  }

  function body() {
    if (item.kind === 'score') return choice === null ? null : { score: choice };
    if (item.kind === 'ranking') return choice.length === item.answers.length ? { ranking: choice } : null;
    if (choice === null) return null;
    if (item.kind === 'ab') return { choice: choice === 'tie' ? 'tie' : (choice === 0 ? 'a' : 'b') };
    return { preferred: choice };
  }

  async function submit() {
    const label = body();
    if (!label) { $('rate-error').textContent = 'Choose first (see the keys above).'; return; }
    const comment = $('rate-comment').value.trim();
    if (comment) label.comment = comment;
    const campaign = sessionStorage.getItem(CAMPAIGN);
    try {
      await api('POST', `/v1/feedback_campaigns/${encodeURIComponent(campaign)}/items/${item.id}/labels`, label);
    } catch (err) {
      $('rate-error').textContent = err.message;
      return;
    }
    await next();
  }

  document.addEventListener('keydown', (event) => {
    if ($('rate-view').hidden || !item) return;
    const typing = event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement;
    if (event.key === 'Enter' && (!typing || event.ctrlKey)) { event.preventDefault(); submit(); return; }
    if (typing) return;
    if (/^[1-9]$/.test(event.key)) choose(Number(event.key) - 1);
    else if (event.key === '0') choose('tie');
    else if (event.key === 'Backspace' && item.kind === 'ranking') { choice.pop(); paint(); }
  });
  $('rate-submit').addEventListener('click', submit);
  $('rate-login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $('rate-key').value.trim());
    sessionStorage.setItem(CAMPAIGN, $('rate-campaign').value.trim());
    next();
  });
  $('rate-forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    item = null;
    show('rate-login');
  });

  readFragment();
  $('rate-campaign').value = sessionStorage.getItem(CAMPAIGN) || '';
  if (sessionStorage.getItem(KEY) && sessionStorage.getItem(CAMPAIGN)) next(); else show('rate-login');
})();
