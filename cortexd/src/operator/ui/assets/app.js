// The fleet page: draws the daemon's state document and traffic window, and follows them live
// through one EventSource on /ui/api/events. Each `state` or `traffic` event carries a whole
// document, so a page that reconnects (the daemon restarted) is in sync with its first event.
'use strict';

const page = { state: null, traffic: null, skewMs: 0, connected: false };

// ---- small helpers --------------------------------------------------------------------------

/** Build an element: el('div', {class: 'x', dataset: {a: 1}}, child, 'text', [more]). */
function el(tag, props, ...children) {
  const node = tag === 'svg' || tag === 'path' || tag === 'rect' || tag === 'line'
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'style' && typeof value === 'object') Object.assign(node.style, value);
    else node.setAttribute(key === 'className' ? 'class' : key, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function fill(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A colour per model, the same in bars, tables and charts: distinct hues in fleet order (none
 *  of them the green or red that mean state), and a hash-picked one for anything else. */
const PALETTE = ['#58a6ff', '#f0883e', '#a371f7', '#39c5cf', '#db61a2', '#e3b341', '#7ee0a0', '#ff9b85', '#8b9eff', '#c9d1d9'];
const coloursByModel = new Map();

function colour(name) {
  if (coloursByModel.has(name)) return coloursByModel.get(name);
  let hash = 2166136261;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 16777619);
  return `hsl(${(hash >>> 0) % 360} 55% 62%)`;
}

function assignColours(models) {
  coloursByModel.clear();
  models.forEach((m, i) => { if (i < PALETTE.length) coloursByModel.set(m.id, PALETTE[i]); });
}

function gb(mb) {
  if (mb >= 1024) return (mb / 1024).toFixed(mb >= 10240 ? 0 : 1) + ' GB';
  return mb + ' MB';
}

function serverNow() { return Date.now() - page.skewMs; }

function duration(ms) {
  if (ms < 1000) return Math.max(0, Math.round(ms)) + ' ms';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm ' + String(Math.floor(s % 60)).padStart(2, '0') + 's';
  return Math.floor(m / 60) + 'h ' + String(m % 60).padStart(2, '0') + 'm';
}

function ago(unixMs) {
  if (!unixMs) return 'never';
  const s = Math.max(0, (serverNow() - unixMs) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return Math.floor(s) + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}

/** A span whose "… ago" text the clock keeps current. */
function agoSpan(unixMs, className) {
  return el('span', { class: className, dataset: { ago: unixMs || 0 } }, ago(unixMs));
}

// ---- header, banners, summary, conditions ---------------------------------------------------

function renderRevision(s) {
  const f = s.fleet;
  const simulated = s.neurons.filter((n) => n.simulated).map((n) => n.name);
  fill('revision',
    el('span', { class: 'chip', title: f.commit || 'not in a git repository' }, 'fleet/ @ ', el('b', {}, f.revision)),
    f.dirty && el('span', { class: 'chip warn', title: 'the fleet files differ from the commit' }, 'uncommitted changes'),
    el('span', { class: 'chip', title: f.digest }, 'digest ', el('b', {}, f.digest_short || '–')),
    el('span', { class: 'chip' }, 'source ', el('b', {}, f.source)),
    el('span', { class: 'chip' }, `${s.neurons.length} ${s.neurons.length === 1 ? 'neuron' : 'neurons'} · ${s.models.length} ${s.models.length === 1 ? 'model' : 'models'}`),
    !f.valid && el('span', { class: 'chip bad' }, 'edit invalid'),
    simulated.length > 0 && el('span', { class: 'chip sim', title: 'these neurons run simulated devices and engines' },
      `simulation: ${simulated.join(', ')}`));
}

function renderBanner(s) {
  const f = s.fleet;
  const banners = [];
  if (!f.valid) {
    banners.push(el('div', { class: 'banner bad', id: 'fleet-errors' },
      el('div', { class: 'title' }, `The edited fleet is invalid: the last good fleet (${f.revision}) stays in force.`),
      el('ul', {}, f.errors.map((e) => el('li', {}, e)))));
  }
  if (f.pending) {
    banners.push(el('div', { class: 'banner warn' },
      el('div', { class: 'title' }, 'Uncommitted edits are not applied'),
      'The fleet reads what is committed at HEAD (source = "commit"); commit the edits to apply them.'));
  }
  if (!page.connected) {
    banners.push(el('div', { class: 'banner warn' },
      el('div', { class: 'title' }, 'Reconnecting to the daemon…'),
      'What you see is the last state received; the page catches up by itself when cortex answers again.'));
  }
  fill('banner', banners);
}

function tone(word) {
  return { Synced: 'ok', Healthy: 'ok', OutOfSync: 'warn', Progressing: 'info', Degraded: 'bad' }[word] || '';
}

function stat(label, value, note, toneName, mono) {
  return el('div', { class: 'panel stat' },
    el('div', { class: 'label' }, label),
    el('div', { class: `value ${toneName || ''} ${mono ? 'mono' : ''}`, dataset: { stat: label.toLowerCase() } },
      toneName !== undefined && el('span', { class: 'lamp' }), value),
    el('div', { class: 'note' }, note));
}

function renderSummary(s) {
  const mode = s.mode === 'off' ? 'off' : (s.mode || 'unknown');
  const rev = (r) => (r ? r.revision : 'never');
  fill('summary',
    stat('Sync', s.sync, s.sync === 'Synced' ? 'the neurons match fleet/' : 'the plan below would change things', tone(s.sync)),
    stat('Health', s.health, s.health === 'Degraded' ? 'see the conditions' : ' ', tone(s.health)),
    stat('Reconcile', mode, mode === 'off' ? 'plan and report drift only' : 'applies plans continuously'),
    stat('Applied', rev(s.last_applied), s.last_applied ? agoSpan(s.last_applied.at_unix_ms) : ' ', undefined, true),
    stat('Attempted', rev(s.last_attempted), s.last_attempted ? agoSpan(s.last_attempted.at_unix_ms) : ' ', undefined, true));
  fill('conditions', s.conditions.map((c) =>
    el('div', { class: 'panel condition', dataset: { condition: c.kind, ok: c.ok } },
      el('span', { class: `lamp ${c.ok ? 'ok' : 'bad'}` }),
      el('div', {},
        el('div', { class: 'kind' }, c.kind, el('span', { class: 'tf' }, c.ok ? 'True' : 'False')),
        el('div', { class: 'why' }, el('b', {}, c.reason + ':'), ' ', c.message)))));
}

// ---- neurons ---------------------------------------------------------------------------------

function memoryBar(title, detail, m, key) {
  const used = m.total_mb - m.free_mb;
  const pct = (mb) => (m.total_mb > 0 ? (100 * mb) / m.total_mb : 0) + '%';
  const segments = m.models.map((seg) =>
    el('div', { class: `seg ${seg.status}`, title: `${seg.model}: ${gb(seg.mb)} (${seg.status})`,
      style: { width: pct(seg.mb), backgroundColor: colour(seg.model) } }));
  if (m.outside_mb > 0) {
    segments.push(el('div', { class: 'seg outside', title: `outside cortex: ${gb(m.outside_mb)}`, style: { width: pct(m.outside_mb) } }));
  }
  return el('div', { class: 'memory', dataset: key },
    el('div', { class: 'line' },
      el('span', { class: 'what' }, title, detail && el('span', { class: 'faint' }, detail)),
      el('span', { class: 'figures' }, `${gb(used)} / ${gb(m.total_mb)} used · ${gb(m.free_mb)} free`)),
    el('div', { class: 'bar' }, segments),
    el('div', { class: 'legend' },
      m.models.map((seg) => el('span', { class: 'key' },
        el('span', { class: 'swatch', style: { backgroundColor: colour(seg.model) } }), `${seg.model} ${gb(seg.mb)}`,
        seg.status !== 'loaded' && el('span', { class: 'faint' }, `(${seg.status})`))),
      m.outside_mb > 0 && el('span', { class: 'key' }, el('span', { class: 'swatch outside' }), `outside cortex ${gb(m.outside_mb)}`),
      el('span', { class: 'key' }, el('span', { class: 'swatch free' }), `free ${gb(m.free_mb)}`)));
}

function renderNeuron(n) {
  const stateWord = { up: 'up', unreachable: 'unreachable', unknown: 'waiting for first poll' }[n.state];
  const labels = Object.entries(n.labels || {}).map(([k, v]) => el('span', { class: 'chip' }, `${k}=${v}`));
  const m = n.maintenance;
  // Out of service: cordoned, draining, or drained (draining and holding nothing of cortex's).
  const service = n.service === 'draining' && m && m.safe_to_stop ? 'drained' : n.service;
  const serviceTitle = { cordoned: 'cordoned: nothing new starts here; what is loaded keeps serving',
    draining: 'draining: its copies move elsewhere, make-before-break',
    drained: 'drained: nothing cortex manages is loaded here; safe to stop' }[service];
  return el('div', { class: 'panel neuron', dataset: { neuron: n.name, state: n.state, service } },
    el('div', { class: 'neuron-head' },
      el('span', { class: `lamp ${n.state === 'up' ? 'ok' : n.state === 'unreachable' ? 'bad' : ''}` }),
      el('span', { class: 'name' }, n.name),
      n.simulated && el('span', { class: 'chip sim', title: 'simulated devices and engines' }, 'simulated'),
      service !== 'active' && el('span', { class: `badge ${service}`, title: serviceTitle }, service),
      labels,
      el('span', { class: 'state' }, stateWord)),
    el('div', { class: 'meta' }, [n.endpoint, `generation ${n.generation}`, n.harnesses.length ? `harnesses: ${n.harnesses.join(', ')}` : null]
      .filter(Boolean).join(' · ')),
    m && el('div', { class: `maintenance ${m.safe_to_stop ? 'safe' : ''}`, dataset: { copiesLeft: m.copies_left, inFlight: m.in_flight } },
      m.summary,
      m.suspended_pins.length > 0 && el('div', { class: 'faint' }, `pins suspended here: ${m.suspended_pins.join(', ')}`)),
    n.state === 'unreachable' && n.error && el('div', { class: 'error' }, n.error),
    n.devices.map((d) => memoryBar(`GPU ${d.index}`, [d.name, d.utilization_pct != null ? `${d.utilization_pct}%` : null,
      d.temperature_c != null ? `${d.temperature_c}°C` : null].filter(Boolean).join(' · '), d, { device: `${n.name}/${d.index}` })),
    n.ram.total_mb > 0 && memoryBar('Host RAM', 'CPU models', n.ram, { ram: n.name }),
    n.devices.length === 0 && n.ram.total_mb === 0 && el('div', { class: 'empty' }, 'nothing observed yet'));
}

function renderNeurons(s) {
  fill('neurons', s.neurons.length ? s.neurons.map(renderNeuron) : el('div', { class: 'panel empty' }, 'The fleet declares no neuron.'));
}

// ---- models ----------------------------------------------------------------------------------

function policy(m) {
  if (!m.declared) return el('span', { class: 'faint' }, 'not in the fleet (drift or loaded by hand)');
  const parts = [];
  if (m.pinned_on.length) parts.push(el('span', { class: 'pin' }, `pinned on ${m.pinned_on.join(', ')}`));
  if (m.replicas > 0) parts.push(`${m.replicas} ${m.replicas === 1 ? 'replica' : 'replicas'}`);
  if (!parts.length) parts.push('on demand');
  return el('span', { class: 'policy' }, parts.map((p, i) => [i ? ' · ' : '', p]));
}

function loadingProgress(p, estimate) {
  const since = p.loading_since_unix_ms;
  return el('span', { class: 'loading-progress', dataset: { since: since || 0, estimate: estimate || 0 } }, progressParts(since, estimate));
}

function progressParts(since, estimate) {
  const elapsed = since ? serverNow() - since : 0;
  const text = estimate ? `${duration(elapsed)} of ~${duration(estimate)}` : `${duration(elapsed)} (no estimate yet)`;
  const width = estimate ? Math.min(100, (100 * elapsed) / estimate) : 0;
  return [el('span', { class: `progress ${estimate && elapsed > estimate ? 'late' : ''}` }, el('span', { style: { width: width + '%' } })),
    ' ', el('span', { class: 'elapsed' }, text)];
}

function placement(m, p) {
  const devices = p.devices.length ? 'GPU ' + p.devices.join(',') : 'CPU';
  const size = p.devices.length ? gb(p.vram_mb) : gb(p.ram_mb);
  return el('div', { class: 'placement', dataset: { placement: p.neuron, status: p.status } },
    el('span', { class: `where ${p.neuron_reachable ? '' : 'gone'}`, title: p.neuron_reachable ? '' : 'neuron unreachable: last seen state' }, p.neuron),
    el('span', { class: `badge ${p.neuron_reachable ? p.status : 'stale'}`, title: p.neuron_reachable ? '' : 'last seen before the neuron stopped answering' },
      p.neuron_reachable ? p.status : `${p.status}?`),
    el('span', { class: 'devs' }, `${devices} · ${size}`),
    !p.managed && el('span', { class: 'chip', title: 'started outside cortex; never touched' }, 'unmanaged'),
    p.status === 'loading' && loadingProgress(p, m.estimated_cold_start_ms),
    p.status === 'loaded' && p.load_duration_ms && el('span', { class: 'faint' }, `loaded in ${duration(p.load_duration_ms)}`),
    p.status === 'failed' && p.error && el('div', { class: 'reason' }, p.error));
}

function renderModels(s) {
  const head = el('tr', {}, ['Model', 'Policy', 'Where', 'In flight', 'Queued', 'Last used', 'Needs'].map((t) => el('th', {}, t)));
  const rows = s.models.map((m) => {
    const lastUsed = Math.max(0, ...m.placements.map((p) => p.last_used_unix_ms || 0));
    const inFlight = m.placements.reduce((n, p) => n + p.in_flight, 0);
    const needs = m.min_devices > 0 || m.vram_mb > 0 ? `${gb(m.vram_mb)} VRAM` + (m.min_devices > 1 ? ` on ${m.min_devices} GPUs` : '') : `${gb(m.ram_mb)} RAM (CPU)`;
    return el('tr', { dataset: { model: m.id } },
      el('td', {},
        el('div', { class: 'id' }, el('span', { class: 'swatch', style: { backgroundColor: colour(m.id) } }), m.id),
        m.aliases.length > 0 && el('div', { class: 'aliases' }, 'aka ' + m.aliases.join(', '))),
      el('td', {}, policy(m)),
      el('td', {}, m.placements.length ? m.placements.map((p) => placement(m, p))
        : el('span', { class: 'faint', dataset: { status: 'not-loaded' } },
          'not loaded' + (m.estimated_cold_start_ms ? ` · cold start ~${duration(m.estimated_cold_start_ms)}` : ''))),
      el('td', { class: 'num' }, String(inFlight)),
      el('td', { class: 'num', dataset: { queue: String(m.queue_depth) }, title: m.queue_depth ? `oldest waiting ${duration(m.queue_oldest_wait_ms)}` : '' },
        m.queue_depth ? `${m.queue_depth} · ${duration(m.queue_oldest_wait_ms)}` : '0'),
      el('td', { class: 'num' }, lastUsed ? agoSpan(lastUsed) : 'never'),
      el('td', { class: 'num' }, `${needs} · ${m.harness}`));
  });
  fill('models', el('thead', {}, head), el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { class: 'empty', colspan: 7 }, 'The fleet declares no model.'))));
}

// ---- keys ------------------------------------------------------------------------------------

function budget(used, limit) {
  if (!limit) return String(used);
  const share = Math.min(100, Math.floor((used * 100) / limit));
  return el('span', { title: `${used} of ${limit} tokens`, dataset: { share: String(share) } },
    `${used} / ${limit}`, el('span', { class: share >= 100 ? 'bad' : share >= 80 ? 'warn' : 'faint' }, ` · ${share}%`));
}

function renderKeys(s) {
  const keys = s.keys || [];
  document.getElementById('keys-title').hidden = keys.length === 0;
  document.getElementById('keys-panel').hidden = keys.length === 0;
  const head = el('tr', {}, ['Key', 'State', 'Priority', 'Requests today', 'Tokens today', 'This month'].map((t) => el('th', {}, t)));
  const rows = keys.map((k) => el('tr', { dataset: { key: k.name } },
    el('td', {}, el('div', { class: 'id' }, k.name)),
    el('td', {}, k.state),
    el('td', {}, k.priority),
    el('td', { class: 'num' }, String(k.requests)),
    el('td', { class: 'num' }, budget(k.tokens_today, k.limits.tokens_per_day)),
    el('td', { class: 'num' }, budget(k.tokens_this_month, k.limits.tokens_per_month))));
  fill('keys', el('thead', {}, head), el('tbody', {}, rows));
}

// ---- plan and runs ---------------------------------------------------------------------------

function renderPlan(s) {
  const lines = s.plan.text.replace(/\n$/, '').split('\n').map((line) => {
    const t = line.trimStart();
    const cls = t.startsWith('-/+') ? 'mod' : t.startsWith('+ ') ? 'add' : t.startsWith('- ') ? 'del'
      : t.startsWith('#') ? 'cmt' : t.startsWith('Plan:') || t.startsWith('No changes.') ? 'sum' : '';
    return [cls ? el('span', { class: cls }, line) : line, '\n'];
  });
  fill('plan', lines);
  const p = s.plan;
  fill('plan-summary', p.empty ? 'no changes' : `${p.load} to load · ${p.reload} to reload · ${p.unload} to unload · ${p.infeasible} infeasible · ${p.drift} drifted`);
}

function renderRuns(s) {
  const head = el('tr', {}, ['When', 'Revision', 'Result', 'Took', 'Summary'].map((t) => el('th', {}, t)));
  const rows = s.runs.slice().reverse().map((r) => el('tr', { dataset: { run: r.result } },
    el('td', { class: 'when' }, agoSpan(r.started_unix_ms)),
    el('td', { class: 'mono' }, r.revision),
    el('td', {}, el('span', { class: `badge ${r.result}` }, r.result.replace('_', ' '))),
    el('td', { class: 'mono muted' }, duration(r.duration_ms)),
    el('td', {}, el('div', { class: 'summary-text' }, r.summary), r.errors.map((e) => el('div', { class: 'err' }, e)))));
  fill('runs', el('thead', {}, head), el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { class: 'empty', colspan: 5 }, 'No reconcile pass yet.'))));
}

// ---- traffic charts --------------------------------------------------------------------------

/** A sparkline of one or two series (null = no data) as an SVG path, with the area under the first. */
function spark(series, colours, options) {
  const width = 240, height = 38, pad = 2;
  const all = series.flat().filter((v) => v !== null);
  const max = Math.max(options.floor || 0, ...all, 1e-9);
  const x = (i) => (i * width) / Math.max(1, series[0].length - 1);
  const y = (v) => height - pad - ((height - 2 * pad) * v) / max;
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none' },
    el('line', { x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5, stroke: '#262f3b', 'stroke-width': 1 }));
  series.forEach((values, k) => {
    if (options.bars) {
      values.forEach((v, i) => {
        if (v) svg.append(el('rect', { x: x(i) - 1, y: y(v), width: 2.4, height: height - pad - y(v), fill: colours[k] }));
      });
      return;
    }
    let d = '', open = false;
    values.forEach((v, i) => {
      if (v === null) { open = false; return; }
      d += `${open ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      open = true;
    });
    if (!d) return;
    // A value with no neighbour has no line to be part of: draw it as a dot.
    values.forEach((v, i) => {
      if (v !== null && (values[i - 1] ?? null) === null && (values[i + 1] ?? null) === null) {
        svg.append(el('rect', { x: x(i) - 1.5, y: y(v) - 1.5, width: 3, height: 3, fill: colours[k] }));
      }
    });
    if (k === 0 && options.area) {
      const area = values.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v || 0).toFixed(1)}`).join('') + `L${width},${height}L0,${height}Z`;
      svg.append(el('path', { d: area, fill: colours[k], 'fill-opacity': 0.16, stroke: 'none' }));
    }
    svg.append(el('path', { d, fill: 'none', stroke: colours[k], 'stroke-width': 1.6, 'vector-effect': 'non-scaling-stroke', 'stroke-linejoin': 'round' }));
  });
  return svg;
}

function chart(title, now, svg) {
  return el('div', { class: 'chart' }, el('div', { class: 'head' }, el('span', {}, title), el('b', {}, now)), svg);
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

function renderTraffic() {
  const t = page.traffic;
  if (!t || !t.models) return;
  if (!t.models.length) {
    fill('traffic', el('div', { class: 'empty' }, 'No requests through the gateway in the last 15 minutes.'));
    return;
  }
  const step = t.step_s;
  // The newest bucket is still filling: rates over it would dip, so the "now" figure is the last full one.
  const full = (values) => values.slice(0, -1);
  fill('traffic', t.models.map((m) => {
    const rps = m.requests.map((n) => n / step);
    const tps = m.completion_tokens.map((n) => n / step);
    const c = colour(m.model);
    const p50 = lastValue(full(m.ttft_p50_ms)), p95 = lastValue(full(m.ttft_p95_ms));
    const errors = m.errors.reduce((a, b) => a + b, 0);
    // The cache share: the part of the prompt tokens the engines took from their prompt cache.
    const sum = (values) => (values || []).reduce((a, b) => a + b, 0);
    const prompt = sum(m.prompt_tokens), cached = sum(m.cached_tokens);
    const share = (m.prompt_tokens || []).map((n, i) => (n ? (100 * m.cached_tokens[i]) / n : null));
    const cacheChart = chart('prompt cached', prompt ? `${Math.round((100 * cached) / prompt)}% in 15 min` : '–',
      spark([share], [c], { floor: 100 }));
    cacheChart.dataset.cacheShare = m.model;
    return el('div', { class: 'row', dataset: { traffic: m.model } },
      el('div', { class: 'model' }, el('span', { class: 'swatch', style: { backgroundColor: c } }), m.model),
      chart('requests/s', (full(rps).at(-1) || 0).toFixed(2), spark([rps], [c], { area: true })),
      chart('TTFT p50 / p95', p50 === null ? '–' : `${p50} / ${p95} ms`, spark([m.ttft_p50_ms, m.ttft_p95_ms], [c, '#d29922'], {})),
      chart('tokens/s', (full(tps).at(-1) || 0).toFixed(1), spark([tps], [c], { area: true })),
      cacheChart,
      chart('errors', `${errors} in 15 min`, spark([m.errors], ['#f85149'], { bars: true, floor: 1 })));
  }));
}

// ---- requests: the recent requests and one request's timeline -------------------------------

// `asked` numbers the list's queries: an answer to an older one (the filter changed while it
// was on its way) is dropped, so the list always shows the latest filter's answer.
const requests = { picked: null, detail: null, timer: null, asked: 0 };

function requestQuery() {
  const form = new FormData(document.getElementById('requests-filter'));
  const query = new URLSearchParams({ limit: '100' });
  for (const [name, value] of form.entries()) if (String(value).trim()) query.set(name, String(value).trim());
  return query.toString();
}

async function loadRequests() {
  const asked = ++requests.asked;
  const answer = await fetch('/ui/api/requests?' + requestQuery()).catch(() => null);
  if (!answer || !answer.ok) return;
  const doc = await answer.json();
  if (asked === requests.asked) renderRequests(doc);
}

function outcomeBadge(r) {
  const tone = r.outcome === 'ok' ? 'loaded' : r.outcome === 'client_closed' ? 'idle' : 'failed';
  const words = { ok: 'ok', error: 'refused', upstream_error: 'broke off', client_closed: 'client left' };
  return el('span', { class: `badge ${tone}` }, `${r.status || '–'} ${words[r.outcome] || r.outcome}`);
}

function copyText(r) {
  if (!r.copy) return el('span', { class: 'faint' }, '–');
  return [r.copy.neuron, el('span', { class: 'faint' }, r.copy.native ? ' · native' : ' · translated')];
}

function renderRequests(doc) {
  const head = el('tr', {}, ['When', 'Model', 'Key', 'Status', 'Took', 'Waited', 'Copy'].map((t) => el('th', {}, t)));
  const rows = doc.requests.map((r) => el('tr', { dataset: { request: r.id }, class: r.id === requests.picked ? 'picked' : null },
    el('td', { class: 'when' }, agoSpan(r.received_unix_ms)),
    el('td', {}, el('div', { class: 'id' }, el('span', { class: 'swatch', style: { backgroundColor: colour((r.copy && r.copy.model) || r.model || '') } }), r.model || '–')),
    el('td', { class: 'mono' }, r.key || '–'),
    el('td', {}, outcomeBadge(r)),
    el('td', { class: 'num' }, duration(r.duration_ms)),
    el('td', { class: 'num' }, r.queue_wait_ms === null ? '–' : duration(r.queue_wait_ms), r.load && r.load.swap ? el('span', { class: 'faint' }, ' · swap') : null),
    el('td', { class: 'mono' }, copyText(r))));
  fill('requests', el('thead', {}, head), el('tbody', {}, rows.length ? rows
    : el('tr', {}, el('td', { class: 'empty', colspan: 7 }, 'No request kept matches.'))));
  fill('requests-count', `${doc.requests.length} shown · the daemon keeps the last ${doc.capacity}`);
}

async function pickRequest(id) {
  requests.picked = id;
  for (const row of document.querySelectorAll('#requests tr[data-request]')) row.classList.toggle('picked', row.dataset.request === id);
  const answer = await fetch('/ui/api/requests/' + encodeURIComponent(id)).catch(() => null);
  if (!answer || requests.picked !== id) return;
  if (!answer.ok) { fill('request-detail', el('div', { class: 'empty' }, 'This request is no longer kept.')); return; }
  const doc = await answer.json();
  if (requests.picked === id) renderRequest(doc);
}

/** One bar on the time axis, from `from` to `to` (ms from the request's arrival). */
function axisRow(name, from, to, scale, className, note, dataset) {
  const left = ((from - scale.start) * 100) / scale.span;
  const width = Math.max(0.3, ((to - from) * 100) / scale.span);
  return el('div', { class: 'row', dataset },
    el('span', { class: 'name' }, name),
    el('div', { class: 'track' }, from === to
      ? el('span', { class: 'tick', style: { left: `calc(${left}% - 1px)` } })
      : el('span', { class: `span ${className}`, style: { left: `${left}%`, width: `${width}%` } })),
    el('span', { class: 'after' }, note));
}

function renderRequest(r) {
  const at = Object.fromEntries(r.stages.map((s) => [s.stage, s.at_ms]));
  const start = Math.min(0, ...r.stages.map((s) => s.at_ms));
  const scale = { start, span: Math.max(1, r.duration_ms - start) };
  const spans = [];
  if (at.queued !== undefined && at.placed !== undefined) spans.push(axisRow('queue wait', at.queued, at.placed, scale, 'wait', duration(at.placed - at.queued), { span: 'wait' }));
  if (r.load) {
    const ready = r.load.ready_ms === null ? r.duration_ms : r.load.ready_ms;
    spans.push(axisRow(r.load.swap ? 'swap' : 'load', r.load.started_ms, ready, scale, 'load', duration(ready - r.load.started_ms), { span: 'load' }));
  }
  if (at.forwarded !== undefined) {
    const first = at.first_byte === undefined ? at.done : at.first_byte;
    spans.push(axisRow('to first byte', at.forwarded, first, scale, 'engine', duration(first - at.forwarded), { span: 'first_byte' }));
    if (at.first_byte !== undefined) spans.push(axisRow('answer', at.first_byte, at.done, scale, r.outcome === 'ok' ? 'engine' : 'bad', duration(at.done - at.first_byte), { span: 'answer' }));
  }
  const stages = r.stages.map((s) => axisRow(s.stage.replace('_', ' '), s.at_ms, s.at_ms, scale, '', `+${duration(s.after_ms)}`, { stage: s.stage }));
  const tokens = r.tokens ? `${r.tokens.in} in${r.tokens.cached === null ? '' : ` (${r.tokens.cached} cached)`} · ${r.tokens.out} out` : '–';
  const copy = r.copy ? `${r.copy.model} on ${r.copy.neuron} (${r.copy.address}, ${r.copy.harness}) · ${r.copy.native ? 'native' : 'translated'} ${r.copy.path}` : '–';
  const load = r.load ? `${r.load.swap ? 'swap' : 'load'} on ${r.load.neuron}${r.load.swap ? `, evicted ${r.load.evicted.join(', ')}` : ''}${r.load.took_ms === null ? '' : ` · took ${duration(r.load.took_ms)}`}` : 'none';
  const fact = (name, value, key) => [el('dt', {}, name), el('dd', { dataset: { fact: key } }, value)];
  fill('request-detail',
    el('div', { class: 'id' }, el('b', {}, r.model || '–'), ' ', outcomeBadge(r), el('span', { class: 'faint' }, ` · ${duration(r.duration_ms)}`)),
    el('dl', { class: 'facts' },
      fact('id', r.id, 'id'), fact('route', r.route, 'route'), fact('key', r.key || '–', 'key'),
      fact('copy', copy, 'copy'), fact('waited behind', load, 'load'), fact('tokens', tokens, 'tokens')),
    r.error && el('div', { class: 'err' }, r.error),
    el('div', { class: 'axis' }, spans, stages,
      el('div', { class: 'scale' }, el('span', {}, `${Math.round(start)} ms`), el('span', {}, duration(r.duration_ms)))));
}

function watchRequests() {
  const form = document.getElementById('requests-filter');
  form.addEventListener('input', () => loadRequests());
  form.addEventListener('submit', (event) => { event.preventDefault(); loadRequests(); });
  document.getElementById('requests').addEventListener('click', (event) => {
    const row = event.target.closest('tr[data-request]');
    if (row) pickRequest(row.dataset.request);
  });
  loadRequests();
  requests.timer = setInterval(() => { if (!document.hidden) loadRequests(); }, 3000);
}

// ---- the live feed ---------------------------------------------------------------------------

function render() {
  const s = page.state;
  if (!s) return;
  document.title = `cortex · ${s.sync} · ${s.health}`;
  assignColours(s.models);
  renderRevision(s);
  renderBanner(s);
  renderSummary(s);
  renderNeurons(s);
  renderModels(s);
  renderKeys(s);
  renderPlan(s);
  renderRuns(s);
}

function setConnected(connected) {
  page.connected = connected;
  const node = document.getElementById('connection');
  node.dataset.connected = String(connected);
  node.querySelector('.text').textContent = connected ? 'live' : 'reconnecting…';
  if (page.state) renderBanner(page.state);
}

function connect() {
  const source = new EventSource('/ui/api/events');
  source.addEventListener('state', (event) => {
    page.state = JSON.parse(event.data);
    page.skewMs = Date.now() - page.state.now_unix_ms;
    page.connected = true;
    setConnected(true);
    render();
  });
  source.addEventListener('traffic', (event) => {
    page.traffic = JSON.parse(event.data);
    renderTraffic();
  });
  source.addEventListener('error', () => {
    setConnected(false);
    // The browser retries by itself while the daemon is away; it gives up only when an answer
    // was not an event stream (a proxy's error page, or 401 after the admin key changed).
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      setTimeout(async () => {
        const probe = await fetch('/ui/api/state').catch(() => null);
        if (probe && probe.status === 401) location.reload();
        else connect();
      }, 2000);
    }
  });
}

/** Once a second: relative times and loading progress move without a new document. */
function tick() {
  for (const node of document.querySelectorAll('[data-ago]')) node.textContent = ago(Number(node.dataset.ago));
  for (const node of document.querySelectorAll('.loading-progress')) {
    node.replaceChildren(...progressParts(Number(node.dataset.since) || 0, Number(node.dataset.estimate) || 0));
  }
}

connect();
watchRequests();
setInterval(tick, 1000);
