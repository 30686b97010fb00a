// Timbala's web UI: draws the page named by <body data-page> from the public JSON API.
// Pages: "graph" (PromQL: Table and Graph tabs, Prometheus's g0.* URL parameters),
// "cluster" (/api/v1/status/cluster) and "tsdb-status" (/api/v1/status/tsdb).
// Every URL is relative, so the pages work behind a reverse proxy's path prefix, and
// every fetch is same-origin, so the browser's basic-auth credentials and TLS apply.
// No library, no inline script or style (the Content-Security-Policy forbids them).
'use strict';

(function () {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
    '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

  // ---------- DOM helpers ----------

  // An element with attributes and children (strings become text nodes, never HTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
    }
  }

  function alertBox(kind, text) {
    return el('div', { class: 'alert alert-' + kind }, text);
  }

  // The messages of an answer, as Prometheus's UI shows them.
  function notices(body) {
    return [
      ...(body.warnings || []).map((w) => alertBox('warning', 'Warning: ' + w)),
      ...(body.infos || []).map((i) => alertBox('info', 'Info: ' + i)),
    ];
  }

  // GET a relative API URL. Resolves to the JSON body on success; rejects with the
  // message Prometheus's UI would show (the API's error, or the HTTP status).
  async function api(path, params) {
    // Resolved against this page without the user:password of a URL like
    // http://user:pass@host/graph (fetch refuses URLs with credentials); the browser
    // still sends the credentials it authenticated this page with.
    const url = new URL(path, window.location.href);
    url.username = '';
    url.password = '';
    url.search = new URLSearchParams(params || {}).toString();
    let response;
    try {
      response = await fetch(url, {
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
      });
    } catch (e) {
      throw new Error('cannot reach the server: ' + e.message);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not JSON (a 401 or 429 from the web config's guard, a proxy's error page).
    }
    if (body && body.status === 'success') return body;
    if (body && body.error) throw new Error(body.error);
    throw new Error('server answered ' + response.status + ' ' + response.statusText);
  }

  // ---------- formatting ----------

  // `metric{a="1", b="2"}` as Prometheus's UI prints a series.
  function seriesName(metric) {
    const name = metric.__name__ || '';
    const labels = Object.keys(metric).filter((k) => k !== '__name__').sort()
      .map((k) => k + '=' + JSON.stringify(metric[k]));
    return name + '{' + labels.join(', ') + '}';
  }

  const DURATION_UNITS = { y: 31536000, w: 604800, d: 86400, h: 3600, m: 60, s: 1, ms: 0.001 };

  // Seconds of a Prometheus duration ("1h", "1h30m", "90s"); null if unparsable.
  function parseDuration(text) {
    const s = String(text || '').trim();
    if (!/^(\d+(ms|y|w|d|h|m|s))+$/.test(s)) return null;
    let total = 0;
    for (const [, n, unit] of s.matchAll(/(\d+)(ms|y|w|d|h|m|s)/g)) {
      total += Number(n) * DURATION_UNITS[unit];
    }
    return total > 0 ? total : null;
  }

  function formatDuration(seconds) {
    let rest = Math.round(seconds);
    let out = '';
    for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]]) {
      if (rest >= size) {
        out += Math.floor(rest / size) + unit;
        rest %= size;
      }
    }
    return out || '0s';
  }

  const pad = (n) => String(n).padStart(2, '0');

  // "YYYY-MM-DD HH:mm:ss" in UTC, the format of Prometheus's end_input/moment_input.
  function formatTime(seconds) {
    const d = new Date(seconds * 1000);
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) +
      ' ' + pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds());
  }

  // Unix seconds of "YYYY-MM-DD HH:mm[:ss]" (UTC) or of a number; null if unparsable.
  function parseTime(text) {
    const s = String(text || '').trim();
    if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
    const m = s.match(/^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?Z?$/);
    if (!m) return null;
    const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
    return Number.isFinite(ms) ? ms / 1000 : null;
  }

  function formatBytes(bytes) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = bytes;
    let i = 0;
    while (value >= 1024 && i < units.length - 1) {
      value /= 1024;
      i += 1;
    }
    return (i === 0 ? String(value) : value.toFixed(1)) + ' ' + units[i];
  }

  // A line of figures under a result, as Prometheus's "Load time: ... Result series: ...".
  function stats(...items) {
    return el('div', { class: 'stats' }, items.map((item) => el('span', {}, item)));
  }

  function badge(state) {
    return el('span', { class: 'badge state-' + state }, state);
  }

  function dataTable(headers, rows, numericColumns) {
    const numeric = new Set(numericColumns || []);
    return el('table', { class: 'data' },
      el('thead', {}, el('tr', {}, headers.map((h, i) => el('th', { class: numeric.has(i) ? 'num' : null }, h)))),
      el('tbody', {}, rows.map((row) => el('tr', {},
        row.map((cell, i) => el('td', { class: numeric.has(i) ? 'num' : null }, cell))))));
  }

  // ---------- PromQL page ----------

  const GRAPH_TAB = '0';
  const TABLE_TAB = '1';

  // The first panel's options from Prometheus's URL parameters (g0.*). Prometheus 2.x's
  // default tab is the table and g0.tab=0 the graph; Prometheus 3.x writes "graph" and
  // "table".
  function panelFromUrl() {
    const p = new URLSearchParams(window.location.search);
    const tab = p.get('g0.tab');
    return {
      expr: p.get('g0.expr') || '',
      tab: tab === GRAPH_TAB || tab === 'graph' ? GRAPH_TAB : TABLE_TAB,
      range: p.get('g0.range_input') || '1h',
      end: p.get('g0.end_input') || '',
      moment: p.get('g0.moment_input') || '',
      step: p.get('g0.step_input') || '',
    };
  }

  // Puts the panel back into the address bar (relative: keeps a proxy's prefix).
  function panelToUrl(panel) {
    const p = new URLSearchParams();
    p.set('g0.expr', panel.expr);
    p.set('g0.tab', panel.tab);
    if (panel.tab === GRAPH_TAB) {
      p.set('g0.range_input', panel.range);
      if (panel.end) p.set('g0.end_input', panel.end);
      if (panel.step) p.set('g0.step_input', panel.step);
    } else if (panel.moment) {
      p.set('g0.moment_input', panel.moment);
    }
    window.history.replaceState(null, '', '?' + p.toString());
  }

  function graphPage(main) {
    const panel = panelFromUrl();
    const exprInput = el('textarea', { id: 'expr', rows: 1, placeholder: 'Expression (press Shift+Enter for newlines)' });
    exprInput.value = panel.expr;
    const output = el('div', { id: 'output', class: 'tab-body' });
    const tableTab = el('button', { class: 'tab', id: 'tab-table', type: 'button' }, 'Table');
    const graphTab = el('button', { class: 'tab', id: 'tab-graph', type: 'button' }, 'Graph');
    const momentInput = el('input', { id: 'moment-input', placeholder: 'Evaluation time (UTC)' });
    momentInput.value = panel.moment;
    const rangeInput = el('input', { id: 'range-input', class: 'narrow' });
    rangeInput.value = panel.range;
    const endInput = el('input', { id: 'end-input', placeholder: 'End time (UTC)' });
    endInput.value = panel.end;
    const stepInput = el('input', { id: 'step-input', class: 'narrow', placeholder: 'Res. (s)' });
    stepInput.value = panel.step;
    const tableControls = el('div', { class: 'controls' },
      el('label', { for: 'moment-input' }, 'Evaluation time'), momentInput);
    const graphControls = el('div', { class: 'controls' },
      el('label', { for: 'range-input' }, 'Range'), rangeInput,
      el('label', { for: 'end-input' }, 'Until'), endInput,
      el('label', { for: 'step-input' }, 'Resolution'), stepInput);

    function execute() {
      panel.expr = exprInput.value.trim();
      panel.moment = momentInput.value.trim();
      panel.range = rangeInput.value.trim();
      panel.end = endInput.value.trim();
      panel.step = stepInput.value.trim();
      tableTab.classList.toggle('active', panel.tab === TABLE_TAB);
      graphTab.classList.toggle('active', panel.tab === GRAPH_TAB);
      tableControls.hidden = panel.tab !== TABLE_TAB;
      graphControls.hidden = panel.tab !== GRAPH_TAB;
      output.replaceChildren();
      if (!panel.expr) {
        output.append(el('div', { class: 'muted' }, 'No query executed yet.'));
        return;
      }
      panelToUrl(panel);
      const run = panel.tab === GRAPH_TAB ? runGraph : runTable;
      run(panel, output).catch((e) => {
        output.replaceChildren(alertBox('danger', 'Error executing query: ' + e.message));
      }).finally(() => output.setAttribute('data-done', 'true'));
    }

    tableTab.addEventListener('click', () => { panel.tab = TABLE_TAB; execute(); });
    graphTab.addEventListener('click', () => { panel.tab = GRAPH_TAB; execute(); });
    exprInput.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        execute();
      }
    });
    main.append(
      el('div', { class: 'panel' },
        el('div', { class: 'expr-row' }, exprInput,
          el('button', { class: 'btn btn-primary', id: 'execute', type: 'button', onclick: execute }, 'Execute')),
        el('div', { class: 'tabs' }, tableTab, graphTab),
        el('div', { class: 'tab-body' }, tableControls, graphControls),
        output));
    execute();
  }

  async function runTable(panel, output) {
    const time = panel.moment ? parseTime(panel.moment) : Date.now() / 1000;
    if (time === null) throw new Error('invalid evaluation time "' + panel.moment + '"');
    const started = performance.now();
    const body = await api('api/v1/query', { query: panel.expr, time: String(time) });
    const elapsed = performance.now() - started;
    const { resultType, result } = body.data;
    let rows;
    if (resultType === 'vector') {
      rows = result.map((s) => [el('span', { class: 'series-name' }, seriesName(s.metric)), s.value[1]]);
    } else if (resultType === 'matrix') {
      rows = result.map((s) => [el('span', { class: 'series-name' }, seriesName(s.metric)),
        s.values.map((v) => v[1] + ' @' + v[0]).join('\n')]);
    } else {
      rows = [[resultType, result[1]]];
    }
    output.append(...notices(body),
      stats('Load time: ' + Math.round(elapsed) + 'ms', 'Evaluated at: ' + formatTime(time) + ' UTC',
        'Result series: ' + rows.length));
    if (rows.length === 0) {
      output.append(el('div', { class: 'muted' }, 'Empty query result'));
      return;
    }
    const table = dataTable(['Series', 'Value'], rows, [1]);
    table.id = 'result-table';
    output.append(table);
  }

  async function runGraph(panel, output) {
    const range = parseDuration(panel.range);
    if (range === null) throw new Error('invalid range "' + panel.range + '"');
    const end = panel.end ? parseTime(panel.end) : Date.now() / 1000;
    if (end === null) throw new Error('invalid end time "' + panel.end + '"');
    // Prometheus's default resolution: range / 250, at least one second.
    const step = panel.step ? Number(panel.step) : Math.max(Math.floor(range / 250), 1);
    if (!(step > 0)) throw new Error('invalid resolution "' + panel.step + '"');
    const start = end - range;
    const started = performance.now();
    const body = await api('api/v1/query_range', {
      query: panel.expr, start: String(start), end: String(end), step: String(step),
    });
    const elapsed = performance.now() - started;
    const { resultType, result } = body.data;
    if (resultType !== 'matrix') throw new Error('the query did not return a range vector');
    output.append(...notices(body),
      stats('Load time: ' + Math.round(elapsed) + 'ms', 'Resolution: ' + step + 's',
        'Result series: ' + result.length));
    if (result.length === 0) {
      output.append(el('div', { class: 'muted' }, 'Empty query result'));
      return;
    }
    const width = Math.max(output.clientWidth || 0, 600);
    output.append(lineChart(result, start, end, step, width),
      el('ul', { class: 'legend', id: 'legend' }, result.map((s, i) => el('li', { class: 'legend-item' },
        svg('svg', { class: 'legend-swatch', width: 12, height: 12 },
          svg('rect', { width: 12, height: 12, fill: COLORS[i % COLORS.length] })),
        el('span', { class: 'series-name' }, seriesName(s.metric))))));
  }

  // Round tick values covering [min, max] (the first at or below min, the last at or
  // above max): about `count` of them at 1, 2 or 5 times a power of ten.
  function niceTicks(min, max, count) {
    const span = max - min || Math.abs(max) || 1;
    const raw = span / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const first = Math.floor(min / step);
    const last = Math.ceil(max / step);
    const ticks = [];
    for (let i = first; i <= last; i += 1) {
      // From integers, so that 0.1 + 0.2 never prints as 0.30000000000000004.
      ticks.push(Number((i * step).toPrecision(12)));
    }
    return ticks;
  }

  function formatValue(v) {
    const a = Math.abs(v);
    if (a >= 1e9 || (a > 0 && a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  // An SVG line chart: axes with ticks and a grid, one <path> per series. A gap longer
  // than one step (no sample) breaks the line, as in Prometheus's graph.
  function lineChart(result, start, end, step, width) {
    const height = 400;
    const margin = { left: 70, right: 20, top: 10, bottom: 30 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    let min = Infinity;
    let max = -Infinity;
    for (const s of result) {
      for (const [, v] of s.values) {
        const n = Number(v);
        if (Number.isFinite(n)) { min = Math.min(min, n); max = Math.max(max, n); }
      }
    }
    if (min === Infinity) { min = 0; max = 1; }
    if (min === max) { min -= Math.abs(min) * 0.1 || 1; max += Math.abs(max) * 0.1 || 1; }
    const yTicks = niceTicks(min, max, 6);
    min = yTicks[0];
    max = yTicks[yTicks.length - 1];
    // Pixel positions, rounded to a tenth: enough for the eye, short in the DOM.
    const round = (p) => Math.round(p * 10) / 10;
    const x = (t) => round(margin.left + ((t - start) / (end - start || 1)) * plotW);
    const y = (v) => round(margin.top + (1 - (v - min) / (max - min)) * plotH);

    const chart = svg('svg', { class: 'chart', id: 'chart', width, height, viewBox: '0 0 ' + width + ' ' + height });
    for (const v of yTicks) {
      chart.append(
        svg('line', { class: 'grid', x1: margin.left, x2: width - margin.right, y1: y(v), y2: y(v) }),
        svg('text', { x: margin.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, formatValue(v)));
    }
    const xStep = niceTimeStep((end - start) / 8);
    for (let t = Math.ceil(start / xStep) * xStep; t <= end; t += xStep) {
      const d = new Date(t * 1000);
      const label = (end - start > 2 * 86400 ? pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' : '') +
        pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes());
      chart.append(
        svg('line', { class: 'grid', x1: x(t), x2: x(t), y1: margin.top, y2: margin.top + plotH }),
        svg('text', { x: x(t), y: height - 10, 'text-anchor': 'middle' }, label));
    }
    chart.append(
      svg('line', { class: 'axis-line', x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH }),
      svg('line', { class: 'axis-line', x1: margin.left, x2: width - margin.right, y1: margin.top + plotH, y2: margin.top + plotH }));
    result.forEach((s, i) => {
      let d = '';
      let last = null;
      for (const [t, v] of s.values) {
        const n = Number(v);
        if (!Number.isFinite(n)) { last = null; continue; }
        const joined = last !== null && t - last <= step * 1.5;
        d += (joined ? 'L' : 'M') + x(t) + ',' + y(n);
        last = t;
      }
      chart.append(svg('path', {
        class: 'series', d, stroke: COLORS[i % COLORS.length], 'data-series': seriesName(s.metric),
      }, svg('title', {}, seriesName(s.metric))));
    });
    return chart;
  }

  // A round step for time-axis ticks (seconds), at least `raw`.
  function niceTimeStep(raw) {
    const steps = [1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800];
    return steps.find((s) => s >= raw) || Math.ceil(raw / 604800) * 604800;
  }

  // ---------- cluster page ----------

  async function clusterPage(main) {
    const content = el('div', { id: 'cluster' });
    main.append(el('h2', {}, 'Cluster'), content);
    async function refresh() {
      try {
        const body = await api('api/v1/status/cluster');
        content.replaceChildren(...notices(body), ...clusterView(body.data));
      } catch (e) {
        content.replaceChildren(alertBox('danger', 'Error fetching the cluster status: ' + e.message));
      }
      content.setAttribute('data-done', 'true');
      window.setTimeout(refresh, 10000);
    }
    refresh();
  }

  function clusterView(s) {
    const members = s.members.slice().sort((a, b) => (a.joinSeq ?? Infinity) - (b.joinSeq ?? Infinity));
    const memberTable = dataTable(
      ['Node', 'State', 'HTTP address', 'Gossip address', 'Join sequence', 'Key share'],
      members.map((m) => [
        el('span', {}, m.id, m.id === s.local ? el('span', { class: 'muted' }, ' (this node)') : null),
        badge(m.state), m.httpAddr, m.gossipAddr, m.joinSeq ?? '—',
        (m.keyShare * 100).toFixed(1) + ' %',
      ]), [4, 5]);
    memberTable.id = 'members';
    const order = el('ol', { start: 0, id: 'join-order' }, s.slots.map((slot) => el('li', {},
      slot.id, slot.removed ? [' ', badge('removed')] : null)));
    const backlog = s.handoffBacklog.length === 0
      ? el('div', { class: 'muted', id: 'backlog' }, 'No hints queued.')
      : dataTable(['Target', 'Batches', 'Bytes', 'Oldest hint', 'Missing for', 'Limit exceeded', 'Removed'],
        s.handoffBacklog.map((b) => [
          b.target, b.batches, formatBytes(b.bytes),
          b.oldestHintAgeSeconds == null ? '—' : formatDuration(b.oldestHintAgeSeconds),
          b.missingForSeconds == null ? '—' : formatDuration(b.missingForSeconds),
          b.windowExceeded ? 'window' : b.capExceeded ? 'size cap' : 'no',
          b.removed ? 'yes' : 'no',
        ]), [1, 2]);
    backlog.id = 'backlog';
    const r = s.repair;
    const repair = dataTable(['State', 'Series done', 'Series to go', 'Bytes done', 'Bytes to go', 'Rate', 'Time left', 'Last error'], [[
      badge(r.state), r.seriesDone + ' / ' + r.seriesTotal, r.seriesToGo, formatBytes(r.bytesDone),
      formatBytes(r.bytesToGo), formatBytes(Math.round(r.bytesPerSecond)) + '/s',
      r.estimatedSecondsLeft == null ? '—' : formatDuration(r.estimatedSecondsLeft),
      r.lastError || '—',
    ]], [1, 2, 3, 4, 5, 6]);
    repair.id = 'repair';
    return [
      el('h3', {}, 'Members'), memberTable,
      el('h3', {}, 'Join order'),
      el('div', { class: 'muted' }, 'Jump-hash bucket i is the i-th node; removed nodes keep their slot.'),
      order,
      el('h3', {}, 'Handoff backlog (hints held by this node)'), backlog,
      stats('Hint window: ' + formatDuration(s.hintLimits.windowSeconds),
        'Cap per target: ' + formatBytes(s.hintLimits.maxBytesPerTarget)),
      el('h3', {}, 'Re-replication (this node)'), repair,
    ];
  }

  // ---------- cardinality page ----------

  async function tsdbPage(main) {
    const content = el('div', { id: 'tsdb-status' });
    main.append(el('h2', {}, 'TSDB status'), content);
    try {
      const body = await api('api/v1/status/tsdb');
      content.replaceChildren(...notices(body), ...tsdbView(body.data));
    } catch (e) {
      content.replaceChildren(alertBox('danger', 'Error fetching the TSDB status: ' + e.message));
    }
    content.setAttribute('data-done', 'true');
  }

  function tsdbView(d) {
    const h = d.headStats;
    const head = dataTable(['Number of series', 'Number of label pairs', 'Number of chunks', 'Min time', 'Max time'], [[
      h.numSeries, h.numLabelPairs, h.chunkCount,
      h.numSeries ? formatTime(h.minTime / 1000) + ' UTC' : '—',
      h.numSeries ? formatTime(h.maxTime / 1000) + ' UTC' : '—',
    ]], [0, 1, 2]);
    const top = (id, title, column, list) => {
      const table = dataTable(['Name', column], list.map((s) => [s.name, s.value]), [1]);
      table.id = id;
      return [el('h3', {}, title), table];
    };
    return [
      el('h3', {}, 'Head stats'), head,
      ...top('by-metric', 'Top series count by metric name', 'Count', d.seriesCountByMetricName),
      ...top('by-label-name', 'Top label names with value count', 'Count', d.labelValueCountByLabelName),
      ...top('by-memory', 'Top label names with high memory usage', 'Bytes', d.memoryInBytesByLabelName),
      ...top('by-pair', 'Top series count by label value pairs', 'Count', d.seriesCountByLabelValuePair),
    ];
  }

  // ---------- start ----------

  const PAGES = { graph: graphPage, cluster: clusterPage, 'tsdb-status': tsdbPage };

  function start() {
    const page = document.body.getAttribute('data-page');
    for (const link of document.querySelectorAll('[data-nav]')) {
      link.classList.toggle('active', link.getAttribute('data-nav') === page);
    }
    const main = document.getElementById('main');
    const draw = PAGES[page];
    if (draw) draw(main);
    else main.append(alertBox('danger', 'Unknown page ' + page));
  }

  start();
}());
