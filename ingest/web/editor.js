// The box editor: an SVG laid over the image whose viewBox is the image's
// own pixel grid, so every coordinate the pointer gives is already in
// pixels of the original image (what annotations store).

const NS = 'http://www.w3.org/2000/svg';
const MIN = 3; // a drag smaller than this (pixels) is a click, not a box

export class BoxEditor {
  /**
   * svg: the overlay; onChange(boxes) after every edit; the editable boxes
   * are {label, x, y, width, height} in image pixels.
   */
  constructor(svg, onChange) {
    this.svg = svg;
    this.onChange = onChange;
    this.w = 0;
    this.h = 0;
    this.boxes = [];
    this.others = []; // boxes of other annotations, drawn, not editable
    this.selected = -1;
    this.defaultLabel = '';
    this.drag = null;
    svg.addEventListener('pointerdown', (e) => this.down(e));
    svg.addEventListener('pointermove', (e) => this.move(e));
    svg.addEventListener('pointerup', (e) => this.up(e));
    svg.addEventListener('pointercancel', (e) => this.up(e));
    svg.addEventListener('keydown', (e) => this.key(e));
  }

  /** size sets the image's pixel size (natural width and height). */
  size(w, h) {
    this.w = w;
    this.h = h;
    this.svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    this.svg.setAttribute('preserveAspectRatio', 'none');
    this.render();
  }

  set(boxes, others) {
    this.boxes = boxes.map((b) => ({ ...b }));
    this.others = others || [];
    this.selected = -1;
    this.render();
  }

  select(i) {
    this.selected = i;
    this.render();
    this.onChange(this.boxes, 'select');
  }

  remove(i) {
    if (i < 0 || i >= this.boxes.length) return;
    this.boxes.splice(i, 1);
    if (this.selected === i) this.selected = -1;
    else if (this.selected > i) this.selected--;
    this.changed();
  }

  /** relabel sets box i's label; quiet redraws without telling onChange. */
  relabel(i, label, quiet) {
    if (!this.boxes[i]) return;
    this.boxes[i].label = label;
    if (quiet) this.render();
    else this.changed();
  }

  /** highlight selects box i without telling onChange (a list item has the focus). */
  highlight(i) {
    this.selected = i;
    this.render();
  }

  changed() {
    this.render();
    this.onChange(this.boxes, 'edit');
  }

  point(e) {
    const m = this.svg.getScreenCTM();
    if (!m) return { x: 0, y: 0 };
    const p = new DOMPoint(e.clientX, e.clientY).matrixTransform(m.inverse());
    return { x: clamp(p.x, 0, this.w), y: clamp(p.y, 0, this.h) };
  }

  down(e) {
    if (!this.w || e.button !== 0) return;
    this.svg.focus();
    const p = this.point(e);
    const hit = e.target.dataset && e.target.dataset.box;
    this.svg.setPointerCapture(e.pointerId);
    if (hit !== undefined) {
      const i = Number(hit);
      const b = this.boxes[i];
      this.selected = i;
      this.drag = { kind: 'move', i, dx: p.x - b.x, dy: p.y - b.y, moved: false };
      this.render();
      this.onChange(this.boxes, 'select');
    } else {
      this.drag = { kind: 'draw', x0: p.x, y0: p.y, x1: p.x, y1: p.y };
    }
    e.preventDefault();
  }

  move(e) {
    const d = this.drag;
    if (!d) return;
    const p = this.point(e);
    if (d.kind === 'move') {
      const b = this.boxes[d.i];
      b.x = Math.round(clamp(p.x - d.dx, 0, this.w - b.width));
      b.y = Math.round(clamp(p.y - d.dy, 0, this.h - b.height));
      d.moved = true;
    } else {
      d.x1 = p.x;
      d.y1 = p.y;
    }
    this.render();
  }

  up(e) {
    const d = this.drag;
    if (!d) return;
    this.drag = null;
    if (this.svg.hasPointerCapture(e.pointerId)) this.svg.releasePointerCapture(e.pointerId);
    if (d.kind === 'move') {
      if (d.moved) this.changed();
      return;
    }
    const r = rect(d);
    if (r.width < MIN || r.height < MIN) {
      this.selected = -1;
      this.render();
      this.onChange(this.boxes, 'select');
      return;
    }
    this.boxes.push({ label: this.defaultLabel, ...r });
    this.selected = this.boxes.length - 1;
    this.changed();
  }

  key(e) {
    const i = this.selected;
    if (i < 0) return;
    const b = this.boxes[i];
    const step = e.shiftKey ? 10 : 1;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (e.key === 'Delete' || e.key === 'Backspace') {
      this.remove(i);
    } else if (moves[e.key]) {
      b.x = clamp(b.x + moves[e.key][0], 0, this.w - b.width);
      b.y = clamp(b.y + moves[e.key][1], 0, this.h - b.height);
      this.changed();
    } else if (e.key === 'Escape') {
      this.select(-1);
    } else {
      return;
    }
    e.preventDefault();
  }

  render() {
    const svg = this.svg;
    svg.replaceChildren();
    const font = Math.max(8, Math.round(Math.max(this.w, this.h) / 28));
    const draw = (b, cls, i) => {
      const g = el('g', { class: cls });
      const r = el('rect', { x: b.x, y: b.y, width: b.width, height: b.height, 'vector-effect': 'non-scaling-stroke' });
      if (i !== undefined) r.dataset.box = String(i);
      g.append(r);
      if (b.label) {
        const t = el('text', { x: b.x + 2, y: Math.max(font, b.y - 3), 'font-size': font });
        t.textContent = b.label;
        g.append(t);
      }
      svg.append(g);
    };
    for (const b of this.others) draw(b, 'box other');
    this.boxes.forEach((b, i) => draw(b, i === this.selected ? 'box mine selected' : 'box mine', i));
    if (this.drag && this.drag.kind === 'draw') draw({ label: '', ...rect(this.drag) }, 'box drawing');
  }
}

function rect(d) {
  const x = Math.round(Math.min(d.x0, d.x1));
  const y = Math.round(Math.min(d.y0, d.y1));
  return { x, y, width: Math.round(Math.max(d.x0, d.x1)) - x, height: Math.round(Math.max(d.y0, d.y1)) - y };
}

function clamp(v, lo, hi) {
  return Math.min(Math.max(v, lo), Math.max(lo, hi));
}

function el(name, attrs) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** boxesOf reads the boxes of a stored annotation body, if it has any. */
export function boxesOf(body) {
  if (!body || !Array.isArray(body.boxes)) return [];
  return body.boxes.filter((b) => b && [b.x, b.y, b.width, b.height].every(Number.isFinite))
    .map((b) => ({ label: typeof b.label === 'string' ? b.label : '', x: b.x, y: b.y, width: b.width, height: b.height }));
}
