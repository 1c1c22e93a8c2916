// A small live line chart in plain SVG: CPU %, memory %, queue depth and
// throughput over the last minutes. History is bounded (MAX_POINTS samples).

const SVG_NS = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 170;
const PAD = { l: 34, r: 8, t: 8, b: 20 };
export const WINDOW_SECONDS = 300;
const MAX_POINTS = 200;

const SERIES = [
  { key: 'cpu', label: 'CPU %', cls: 's-cpu', unit: '%', fixedMax: 100 },
  { key: 'mem', label: 'Memory %', cls: 's-mem', unit: '%', fixedMax: 100 },
  { key: 'queued', label: 'Queued', cls: 's-queue', unit: '' },
  { key: 'rate', label: 'Finished/min', cls: 's-rate', unit: '' },
];

function el(name, attrs = {}) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

export class LiveChart {
  constructor(svg, legend) {
    this.svg = svg;
    this.legend = legend;
    this.points = [];  // {t: ms, cpu, mem, queued, rate}
  }

  add(point) {
    this.points.push(point);
    const cutoff = point.t - WINDOW_SECONDS * 1000;
    while (this.points.length > MAX_POINTS || (this.points.length && this.points[0].t < cutoff)) {
      this.points.shift();
    }
    this.draw();
  }

  draw() {
    const svg = this.svg;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const now = this.points.length ? this.points[this.points.length - 1].t : Date.now();
    const x0 = PAD.l;
    const x1 = W - PAD.r;
    const y0 = H - PAD.b;
    const y1 = PAD.t;
    // The window grows with the history (1 minute at least, WINDOW_SECONDS at
    // most), so a freshly opened page does not show a thin sliver at the edge.
    const first = this.points.length ? this.points[0].t : now;
    const span = Math.min(WINDOW_SECONDS, Math.max(60, Math.ceil((now - first) / 60000) * 60));
    const xOf = (t) => x1 - ((now - t) / (span * 1000)) * (x1 - x0);

    // grid: 0/50/100 % and minute marks
    for (const pct of [0, 50, 100]) {
      const y = y0 - (pct / 100) * (y0 - y1);
      svg.appendChild(el('line', { x1: x0, x2: x1, y1: y, y2: y, class: 'grid' }));
      const label = el('text', { x: x0 - 4, y: y + 4, class: 'axis', 'text-anchor': 'end' });
      label.textContent = `${pct}%`;
      svg.appendChild(label);
    }
    const step = span <= 60 ? 15 : span <= 120 ? 30 : 60;
    for (let sec = 0; sec <= span; sec += step) {
      const x = x1 - (sec / span) * (x1 - x0);
      svg.appendChild(el('line', { x1: x, x2: x, y1: y0, y2: y0 + 4, class: 'grid' }));
      const anchor = sec === 0 ? 'end' : sec === span ? 'start' : 'middle';
      const label = el('text', { x, y: H - 4, class: 'axis', 'text-anchor': anchor });
      label.textContent = sec === 0 ? 'now' : sec % 60 === 0 ? `-${sec / 60}m` : `-${sec}s`;
      svg.appendChild(label);
    }

    // legend (text only)
    while (this.legend.firstChild) this.legend.removeChild(this.legend.firstChild);
    const last = this.points[this.points.length - 1];
    for (const s of SERIES) {
      const max = s.fixedMax || Math.max(1, ...this.points.map((p) => p[s.key] || 0));
      if (this.points.length > 1) {
        const pts = this.points.map((p) => {
          const v = Math.max(0, Math.min(max, p[s.key] || 0));
          return `${xOf(p.t).toFixed(1)},${(y0 - (v / max) * (y0 - y1)).toFixed(1)}`;
        }).join(' ');
        svg.appendChild(el('polyline', { points: pts, class: `line ${s.cls}` }));
      }
      const item = document.createElement('span');
      item.className = `legend-item ${s.cls}`;
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      item.appendChild(swatch);
      const value = last ? (last[s.key] ?? 0) : null;
      const shown = value === null ? '–' : (s.unit === '%' ? value.toFixed(0) + '%' : String(Math.round(value * 10) / 10));
      const scale = s.fixedMax ? '' : ` (max ${Math.round(max * 10) / 10})`;
      item.appendChild(document.createTextNode(`${s.label}: ${shown}${scale}`));
      this.legend.appendChild(item);
    }
  }
}
