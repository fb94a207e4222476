// The workbench: sign in, upload and grade, browse the catalogue, open an
// image to see its predictions and annotations and edit boxes, work
// through the review queue with the keyboard, download exports. One view
// at a time, chosen by the URL's hash (#/upload, #/catalogue?tag=t,
// #/image/ID, #/review, #/exports).

import { api, APIError, session, setSession, imageURL, download, topScores, pct } from './api.js';
import { BoxEditor, boxesOf } from './editor.js';

const $ = (id) => document.getElementById(id);
const views = ['signin', 'upload', 'catalogue', 'image', 'review', 'exports'];
const GRADE_WAIT = '20s';

let models = [];

// ---------- small DOM helpers ----------

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

function say(msg) {
  $('status').textContent = msg;
}

function fail(where, err) {
  const msg = err instanceof APIError ? err.toString() : String(err && err.message ? err.message : err);
  $(where).textContent = msg;
  return msg;
}

async function busy(button, f) {
  button.disabled = true;
  try {
    return await f();
  } finally {
    button.disabled = false;
  }
}

/** bars draws a grade's top labels as bars with their scores. */
function bars(grade) {
  const ul = h('ul', { class: 'bars' });
  for (const [label, score] of topScores(grade)) {
    const fill = h('span', { class: 'fill' });
    fill.style.width = pct(score); // CSSOM, which the page's CSP allows
    ul.append(h('li', {}, h('span', { class: 'bar-label', text: label }),
      h('span', { class: 'bar', role: 'img', 'aria-label': `${label} ${pct(score)}` }, fill),
      h('span', { class: 'bar-score', text: pct(score) })));
  }
  return ul;
}

function modelTag(g) {
  return g.model_version ? `${g.model}@${g.model_version}` : g.model;
}

function gradeMeta(g) {
  const parts = [modelTag(g)];
  if (g.inference_ms) parts.push(`${Number(g.inference_ms).toFixed(1)} ms`);
  if (g.batch_size > 1) parts.push(`batch of ${g.batch_size}`);
  return parts.join(' · ');
}

// ---------- session and routing ----------

function show(view) {
  for (const v of views) $('view-' + v).hidden = v !== view;
  const signed = !!session.token;
  $('nav').hidden = !signed;
  $('signout').hidden = !signed;
  $('who').textContent = signed ? session.user : '';
  for (const a of $('nav').querySelectorAll('a')) {
    if (a.dataset.view === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function parseHash() {
  const [path, q] = location.hash.replace(/^#\/?/, '').split('?');
  const [view, ...rest] = path.split('/');
  return { view: view || 'upload', arg: rest.map(decodeURIComponent).join('/'), query: new URLSearchParams(q || '') };
}

async function route() {
  if (!session.token) {
    show('signin');
    $('signin-username').focus();
    return;
  }
  const { view, arg, query } = parseHash();
  say('');
  switch (view) {
    case 'catalogue':
      show('catalogue');
      return openCatalogue(query.get('tag') || '');
    case 'image':
      show('image');
      return openImage(arg);
    case 'review':
      show('review');
      return openReview();
    case 'exports':
      show('exports');
      return;
    default:
      show('upload');
  }
}

async function loadModels() {
  try {
    const r = await api('GET', '/api/v1/models');
    models = r.data || [];
  } catch (e) {
    models = [];
    say('Models: ' + (e instanceof APIError ? e.toString() : e));
  }
  for (const sel of [$('upload-model'), $('image-model')]) {
    const keep = sel.value;
    sel.replaceChildren(...models.map((m) => h('option', { value: m.name, text: m.version ? `${m.name} (v${m.version})` : m.name })));
    if (keep && models.some((m) => m.name === keep)) sel.value = keep;
  }
}

for (const [a, b] of [['upload-model', 'image-model'], ['image-model', 'upload-model']]) {
  $(a).addEventListener('change', () => { $(b).value = $(a).value; });
}

async function signedIn(token, user) {
  setSession(token, user);
  $('signin-form').reset();
  $('signin-error').textContent = '';
  await loadModels();
  if (!location.hash || location.hash === '#/signin') location.hash = '#/upload';
  else route();
}

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = e.target;
  await busy(f.querySelector('button[type=submit]'), async () => {
    try {
      const r = await api('POST', '/api/v1/auth/login', { json: { username: f.username.value, password: f.password.value } });
      await signedIn(r.token, r.username || f.username.value);
    } catch (err) {
      fail('signin-error', err);
    }
  });
});

$('register').addEventListener('click', async () => {
  const f = $('signin-form');
  if (!f.reportValidity()) return;
  await busy($('register'), async () => {
    try {
      const r = await api('POST', '/api/v1/auth/register', { json: { username: f.username.value, password: f.password.value, signupCode: f.signupCode.value } });
      await signedIn(r.token, r.username || f.username.value);
    } catch (err) {
      fail('signin-error', err);
    }
  });
});

$('signout').addEventListener('click', async () => {
  try {
    await api('POST', '/api/v1/auth/logout');
  } catch { /* signed out here either way */ }
  setSession('', '');
  route();
});

addEventListener('signed-out', () => {
  $('signin-error').textContent = 'Your session ended: sign in again.';
  route();
});
addEventListener('hashchange', route);

// ---------- upload and grade ----------

let pending = [];

function setPending(files) {
  pending = [...files].filter((f) => f.type.startsWith('image/') || f.type === '');
  $('pending').replaceChildren(...pending.map((f) => h('li', { text: `${f.name} (${Math.ceil(f.size / 1024)} KiB)` })));
}

$('upload-image').addEventListener('change', (e) => setPending(e.target.files));
// Files dropped anywhere on the upload view are taken; dropped elsewhere
// they are ignored instead of the browser leaving the page to show them.
for (const ev of ['dragenter', 'dragover']) {
  document.addEventListener(ev, (e) => {
    e.preventDefault();
    const here = !$('view-upload').hidden;
    if (e.dataTransfer) e.dataTransfer.dropEffect = here ? 'copy' : 'none';
    $('drop').classList.toggle('over', here);
  });
}
for (const ev of ['dragleave', 'drop']) {
  document.addEventListener(ev, () => $('drop').classList.remove('over'));
}
document.addEventListener('drop', (e) => {
  e.preventDefault();
  if (!$('view-upload').hidden && e.dataTransfer && e.dataTransfer.files.length) setPending(e.dataTransfer.files);
});

function tagsOf(text) {
  return text.split(',').map((t) => t.trim()).filter(Boolean);
}

async function uploadImage(file, tags) {
  const form = new FormData();
  form.append('image', file, file.name);
  for (const t of tags) form.append('tags', t);
  return api('POST', '/api/v1/images', { form });
}

/** grade grades a catalogue image; file is sent instead when the edge cannot grade by id. */
async function grade(imageID, model, file) {
  let g;
  try {
    g = await api('POST', '/api/v1/grades', { json: { image_id: imageID, model }, query: { wait: GRADE_WAIT } });
  } catch (e) {
    if (!(e instanceof APIError) || e.status !== 415 || !file) throw e;
    const form = new FormData();
    form.append('image', file, file.name);
    form.append('model', model);
    g = await api('POST', '/api/v1/grades', { form, query: { wait: GRADE_WAIT } });
  }
  // 202: not graded within the wait; poll until it is.
  while (g.status === 'pending') {
    await new Promise((r) => setTimeout(r, 500));
    g = await api('GET', `/api/v1/grades/${encodeURIComponent(g.id)}`);
  }
  return g;
}

function resultCard(file) {
  const thumb = h('img', { alt: file.name, class: 'thumb' });
  thumb.src = URL.createObjectURL(file);
  thumb.addEventListener('load', () => URL.revokeObjectURL(thumb.src), { once: true });
  const body = h('div', { class: 'result-body' },
    h('p', { class: 'muted', text: file.name }),
    h('p', { class: 'state', text: 'uploading…' }));
  return { li: h('li', { class: 'result' }, thumb, body), body };
}

function showGrade(body, g) {
  body.querySelector('.state').remove();
  if (g.status === 'failed') {
    body.append(h('p', { class: 'error', text: `Failed: ${g.reason || 'unknown reason'}` }));
    return;
  }
  body.append(
    h('p', { class: 'predicted' }, h('span', { class: 'muted', text: 'Predicted: ' }), h('strong', { class: 'predicted-label', text: g.label })),
    bars(g),
    h('p', { class: 'meta muted', text: gradeMeta(g) }));
}

async function sendPending(gradeToo) {
  $('upload-error').textContent = '';
  if (!pending.length) {
    $('upload-error').textContent = 'Choose or drop at least one image.';
    return;
  }
  const tags = tagsOf($('upload-tags').value);
  const model = $('upload-model').value;
  if (gradeToo && !model) {
    $('upload-error').textContent = 'No model to grade with.';
    return;
  }
  if (model) $('image-model').value = model;
  const files = pending;
  setPending([]);
  $('upload-image').value = '';
  // One image at a time keeps the order of the results; the edge batches
  // grades of many users anyway.
  for (const file of files) {
    const card = resultCard(file);
    $('results').prepend(card.li);
    let img;
    try {
      img = await uploadImage(file, tags);
      card.body.append(h('a', { href: `#/image/${encodeURIComponent(img.img_id)}`, text: 'Open' }));
      if (!gradeToo) {
        card.body.querySelector('.state').textContent = `added to the catalogue${tags.length ? ' with ' + tags.join(', ') : ''}`;
        continue;
      }
      card.body.querySelector('.state').textContent = 'grading…';
      showGrade(card.body, await grade(img.img_id, model, file));
    } catch (e) {
      const st = card.body.querySelector('.state');
      if (st) st.remove();
      card.body.append(h('p', { class: 'error', role: 'alert', text: e instanceof APIError ? e.toString() : String(e) }));
    }
  }
}

$('upload-form').addEventListener('submit', (e) => {
  e.preventDefault();
  busy(e.submitter || e.target.querySelector('button[type=submit]'), () => sendPending(true));
});
$('upload-only').addEventListener('click', () => busy($('upload-only'), () => sendPending(false)));

// ---------- catalogue ----------

let gridNext = '';
let gridTag = '';

async function openCatalogue(tag) {
  gridTag = tag;
  $('filter-tag').value = tag;
  $('grid').replaceChildren();
  gridNext = '';
  await moreImages();
}

async function moreImages() {
  const q = { per_page: 48 };
  if (gridTag) q.tag = gridTag;
  if (gridNext) q.cursor = gridNext;
  try {
    const page = await api('GET', '/api/v1/images', { query: q });
    for (const img of page.data || []) $('grid').append(tile(img));
    gridNext = page.next || '';
  } catch (e) {
    say('Catalogue: ' + (e instanceof APIError ? e.toString() : e));
  }
  $('grid-more').hidden = !gridNext;
  $('grid-empty').hidden = $('grid').children.length > 0;
}

// Thumbnails load as they scroll into view: a page of 48 is not 48
// downloads at once.
const lazy = new IntersectionObserver((entries) => {
  for (const en of entries) {
    if (!en.isIntersecting) continue;
    lazy.unobserve(en.target);
    imageURL(en.target.dataset.id).then((u) => { en.target.src = u; }, () => en.target.classList.add('broken'));
  }
}, { rootMargin: '200px' });

function tile(img) {
  const pic = h('img', { alt: img.filename || img.img_id, 'data-id': img.img_id, width: img.width || undefined, height: img.height || undefined });
  lazy.observe(pic);
  const a = h('a', { href: `#/image/${encodeURIComponent(img.img_id)}`, class: 'tile' }, pic,
    h('span', { class: 'tile-name', text: img.filename || img.img_id }),
    h('span', { class: 'tile-tags', text: (img.tags || []).join(', ') }));
  return h('li', {}, a);
}

$('filter-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('filter-tag').value.trim();
  const want = '#/catalogue' + (t ? '?tag=' + encodeURIComponent(t) : '');
  if (location.hash === want) openCatalogue(t);
  else location.hash = want;
});
$('grid-more').addEventListener('click', () => busy($('grid-more'), moreImages));

// ---------- one image: predictions, annotations, boxes ----------

const current = { id: '', img: null, annotations: [], editing: null, predictions: [] };
const editor = new BoxEditor($('overlay'), (boxes, why) => { renderBoxList(); if (why === 'edit') say('Unsaved changes.'); });

async function openImage(id) {
  current.id = id;
  current.editing = null;
  $('image-error').textContent = '';
  $('image-title').textContent = 'Image';
  $('predictions').replaceChildren();
  current.annotations = [];
  current.predictions = [];
  $('predictions').replaceChildren();
  $('badges').replaceChildren();
  $('photo').removeAttribute('src');
  $('photo').style.width = '';
  editor.size(0, 0);
  startNew();
  try {
    current.img = await api('GET', `/api/v1/images/${encodeURIComponent(id)}`);
  } catch (e) {
    fail('image-error', e);
    return;
  }
  const img = current.img;
  $('image-title').textContent = img.filename || img.img_id;
  const url = await imageURL(id).catch((e) => { fail('image-error', e); return ''; });
  if (current.id !== id) return;
  if (url) {
    $('photo').src = url;
    await $('photo').decode().catch(() => {});
  }
  fitPhoto();
  editor.size(img.width || $('photo').naturalWidth, img.height || $('photo').naturalHeight);
  await Promise.all([loadPredictions(), loadAnnotations()]);
}

/**
 * fitPhoto sizes the image to the column: small images are enlarged (to
 * 480 px wide) so that boxes can be drawn on them, large ones shrink to fit
 * the column and three quarters of the window's height. The overlay
 * follows, as it spans the stage.
 */
function fitPhoto() {
  const img = $('photo');
  if (!img.naturalWidth || !img.naturalHeight) return;
  const col = $('stage').parentElement.clientWidth;
  let w = Math.max(img.naturalWidth, Math.min(480, col));
  w = Math.min(w, col, (0.75 * innerHeight * img.naturalWidth) / img.naturalHeight);
  img.style.width = `${Math.floor(w)}px`;
}
addEventListener('resize', fitPhoto);

async function loadPredictions() {
  const id = current.id;
  try {
    let page;
    try {
      page = await api('GET', `/api/v1/images/${encodeURIComponent(id)}/predictions`, { query: { per_page: 20 } });
    } catch (e) {
      // The image was found a moment ago: a 404 here is an edge without
      // the predictions route, where the caller's own grades are the list.
      if (!(e instanceof APIError) || e.status !== 404) throw e;
      page = await api('GET', '/api/v1/grades', { query: { image_id: id, per_page: 20 } });
    }
    if (current.id !== id) return;
    current.predictions = (page.data || []).filter((g) => g.status !== 'failed');
  } catch (e) {
    current.predictions = [];
    fail('image-error', e);
  }
  const list = $('predictions');
  list.replaceChildren(...current.predictions.map((g, i) => {
    const descID = `pred-${i}`;
    const done = g.status === 'completed';
    // Only one's own grade can be accepted (the edge checks it too).
    const mine = !g.owner || g.owner === session.user;
    return h('li', {},
      h('div', { id: descID },
        h('strong', { class: 'predicted-label', text: done ? g.label : 'pending…' }),
        done ? h('span', { class: 'muted', text: ` ${pct(g.score)} · ${gradeMeta(g)}${mine ? '' : ' · by ' + g.owner}` }) : null),
      done ? bars(g) : null,
      done && mine ? h('button', { type: 'button', class: 'small', 'aria-describedby': descID, onclick: (e) => acceptPrediction(g, e.target), text: 'Accept' }) : null);
  }));
  if (!current.predictions.length) list.append(h('li', { class: 'muted', text: 'No predictions yet: grade it.' }));
  renderBadges();
}

/** renderBadges writes the image-level labels over the image: the latest prediction's and the annotations'. */
function renderBadges() {
  const latest = current.predictions.find((g) => g.status === 'completed');
  const labels = [...new Set(current.annotations.map((a) => a.annotation && a.annotation.label).filter((l) => typeof l === 'string' && l))];
  $('badges').replaceChildren(
    ...(latest ? [h('li', { text: `${modelTag(latest)}: ${latest.label} ${pct(latest.score)}` })] : []),
    ...labels.map((l) => h('li', { class: 'human', text: l })));
}

async function acceptPrediction(g, button) {
  $('image-error').textContent = '';
  await busy(button, async () => {
    try {
      await api('POST', `/api/v1/images/${encodeURIComponent(current.id)}/annotations/from-prediction`, { json: { grade_id: g.id } });
      say(`Accepted ${g.label} from ${modelTag(g)}.`);
      await loadAnnotations();
    } catch (e) {
      fail('image-error', e);
    }
  });
}

async function loadAnnotations() {
  const id = current.id;
  let list = [];
  try {
    let cursor = '';
    do {
      const page = await api('GET', '/api/v1/annotations', { query: cursor ? { image_id: id, cursor, per_page: 100 } : { image_id: id, per_page: 100 } });
      list = list.concat(page.data || []);
      cursor = page.next || '';
    } while (cursor && list.length < 1000);
  } catch (e) {
    fail('image-error', e);
  }
  if (current.id !== id) return;
  current.annotations = list;
  renderAnnotations();
}

function renderAnnotations() {
  const ul = $('annotations');
  ul.replaceChildren(...current.annotations.map((a) => {
    const body = a.annotation || {};
    const boxes = boxesOf(body);
    const mine = a.author === session.user;
    const what = [body.label ? `“${body.label}”` : '', boxes.length ? `${boxes.length} box${boxes.length > 1 ? 'es' : ''}` : '',
      !body.label && !boxes.length ? JSON.stringify(body).slice(0, 60) : ''].filter(Boolean).join(', ');
    const editingThis = current.editing && current.editing.id === a.id;
    return h('li', { class: editingThis ? 'editing' : '' },
      h('span', { class: 'ann-label', text: what }),
      h('span', { class: 'muted', text: ` by ${a.author}${body.from_grade ? ' (from a prediction)' : ''}` }),
      mine ? h('span', { class: 'row' },
        h('button', { type: 'button', class: 'small secondary', onclick: () => startEdit(a), text: 'Edit', 'aria-label': `Edit annotation ${what}` }),
        h('button', { type: 'button', class: 'small danger', onclick: (e) => deleteAnnotation(a, e.target), text: 'Delete', 'aria-label': `Delete annotation ${what}` })) : null);
  }));
  if (!current.annotations.length) ul.append(h('li', { class: 'muted', text: 'No annotations yet.' }));
  renderBadges();
  drawAll();
}

/** drawAll shows the boxes of every annotation; those being edited are editable. */
function drawAll() {
  editor.others = current.annotations.filter((a) => !current.editing || a.id !== current.editing.id)
    .flatMap((a) => boxesOf(a.annotation));
  editor.render();
  renderBoxList();
}

function startNew() {
  current.editing = null;
  $('editing-title').textContent = 'New annotation';
  $('edit-label').value = '';
  editor.set([], []);
  renderAnnotations();
}

function startEdit(a) {
  current.editing = a;
  const body = a.annotation || {};
  $('editing-title').textContent = 'Editing annotation';
  $('edit-label').value = typeof body.label === 'string' ? body.label : '';
  editor.set(boxesOf(body), []);
  renderAnnotations();
}

function renderBoxList() {
  editor.defaultLabel = $('edit-label').value.trim() || lastBoxLabel || 'object';
  const ol = $('boxes');
  ol.replaceChildren(...editor.boxes.map((b, i) => {
    const n = i + 1;
    const input = h('input', { value: b.label, 'aria-label': `Box ${n} label`, placeholder: 'label' });
    // Typing relabels in place: re-rendering the list would take the focus away.
    input.addEventListener('input', () => {
      lastBoxLabel = input.value.trim();
      editor.relabel(i, lastBoxLabel, true);
      say('Unsaved changes.');
    });
    input.addEventListener('focus', () => {
      editor.highlight(i);
      for (const li of ol.children) li.classList.toggle('selected', li === input.parentElement);
    });
    return h('li', { class: i === editor.selected ? 'selected' : '' },
      h('span', { class: 'muted', text: `${b.x},${b.y} ${b.width}×${b.height}` }), input,
      h('button', { type: 'button', class: 'small danger', onclick: () => editor.remove(i), text: '✕', 'aria-label': `Delete box ${n}` }));
  }));
}
let lastBoxLabel = '';
$('edit-label').addEventListener('input', () => { editor.defaultLabel = $('edit-label').value.trim() || lastBoxLabel || 'object'; });

$('edit-new').addEventListener('click', startNew);

$('edit-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('image-error').textContent = '';
  const label = $('edit-label').value.trim();
  const boxes = editor.boxes.map((b) => ({ label: b.label.trim(), x: b.x, y: b.y, width: b.width, height: b.height }));
  const unlabelled = boxes.findIndex((b) => !b.label);
  if (unlabelled >= 0) {
    $('image-error').textContent = `Box ${unlabelled + 1} needs a label.`;
    return;
  }
  if (!label && !boxes.length) {
    $('image-error').textContent = 'Give the image a label or draw a box.';
    return;
  }
  // An edit keeps the fields this page does not know (from_grade, score,
  // a tool's own fields) and replaces label and boxes.
  const body = current.editing ? { ...(current.editing.annotation || {}) } : {};
  delete body.label;
  delete body.boxes;
  if (label) body.label = label;
  if (boxes.length || current.editing) body.boxes = boxes;
  await busy(e.submitter || e.target.querySelector('button[type=submit]'), async () => {
    try {
      if (current.editing) await api('PATCH', `/api/v1/annotations/${encodeURIComponent(current.editing.id)}`, { json: { annotation: body } });
      else await api('POST', '/api/v1/annotations', { json: { image_id: current.id, annotation: body } });
      say('Annotation saved.');
      editor.set([], []);
      current.editing = null;
      await loadAnnotations();
      startNew();
    } catch (err) {
      fail('image-error', err);
    }
  });
});

async function deleteAnnotation(a, button) {
  await busy(button, async () => {
    try {
      await api('DELETE', `/api/v1/annotations/${encodeURIComponent(a.id)}`);
      if (current.editing && current.editing.id === a.id) startNew();
      current.annotations = current.annotations.filter((x) => x.id !== a.id);
      renderAnnotations();
      say('Annotation deleted.');
    } catch (e) {
      fail('image-error', e);
    }
  });
}

$('regrade-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('image-error').textContent = '';
  await busy(e.submitter || e.target.querySelector('button[type=submit]'), async () => {
    try {
      const g = await grade(current.id, $('image-model').value, null);
      say(g.status === 'failed' ? `Grading failed: ${g.reason}` : `Graded: ${g.label} (${gradeMeta(g)}).`);
      await loadPredictions();
    } catch (err) {
      fail('image-error', err);
    }
  });
});

// ---------- review queue ----------

const review = { items: [], pos: 0, loading: false };

// An entry of the queue is {image, prediction: {grade_id, model, model_version, label, score}}.
const itemID = (it) => (it.image && it.image.img_id) || (it.prediction && it.prediction.image_id);
const itemPrediction = (it) => it.prediction || null;
const gradeIDOf = (p) => p && (p.grade_id || p.id);

async function openReview() {
  review.loading = true;
  $('review-empty').hidden = true;
  try {
    const q = { per_page: 100 };
    if ($('review-unannotated').checked) q.unannotated = '1';
    const page = await api('GET', '/api/v1/review', { query: q });
    review.items = page.data || [];
  } catch (e) {
    review.items = [];
    say('Review: ' + (e instanceof APIError ? e.toString() : e));
  }
  review.loading = false;
  review.pos = Math.min(review.pos, Math.max(0, review.items.length - 1));
  showReviewItem();
  $('review-card').focus();
}

async function showReviewItem() {
  const it = review.items[review.pos];
  $('review-card').hidden = !it;
  $('review-empty').hidden = !!it;
  $('review-pos').textContent = it ? `${review.pos + 1} / ${review.items.length}` : '';
  if (!it) return;
  const p = itemPrediction(it);
  $('review-label').textContent = p ? p.label : 'no prediction';
  $('review-meta').textContent = p ? `${pct(p.score)} · ${gradeMeta(p)}` : '';
  $('review-accept').disabled = !gradeIDOf(p);
  const id = itemID(it);
  $('review-photo').alt = (it.image && it.image.filename) || id;
  $('review-photo').removeAttribute('src');
  const url = await imageURL(id).catch(() => '');
  if (itemID(review.items[review.pos] || {}) === id && url) $('review-photo').src = url;
}

function reviewStep(d) {
  if (!review.items.length) return;
  review.pos = Math.min(Math.max(0, review.pos + d), review.items.length - 1);
  showReviewItem();
}

async function reviewAccept() {
  const it = review.items[review.pos];
  const p = it && itemPrediction(it);
  if (!gradeIDOf(p)) return;
  await busy($('review-accept'), async () => {
    try {
      await api('POST', `/api/v1/images/${encodeURIComponent(itemID(it))}/annotations/from-prediction`, { json: { grade_id: gradeIDOf(p) } });
      say(`Accepted ${p.label} for ${(it.image && it.image.filename) || itemID(it)}.`);
      if ($('review-unannotated').checked) {
        review.items.splice(review.pos, 1); // annotated now: no longer in this queue
        review.pos = Math.min(review.pos, Math.max(0, review.items.length - 1));
        showReviewItem();
      } else {
        reviewStep(1);
      }
    } catch (e) {
      say('Accept: ' + (e instanceof APIError ? e.toString() : e));
    }
  });
}

function reviewOpen() {
  const it = review.items[review.pos];
  if (it) location.hash = `#/image/${encodeURIComponent(itemID(it))}`;
}

$('review-next').addEventListener('click', () => reviewStep(1));
$('review-accept').addEventListener('click', reviewAccept);
$('review-open').addEventListener('click', reviewOpen);
$('review-unannotated').addEventListener('change', () => { review.pos = 0; openReview(); });

document.addEventListener('keydown', (e) => {
  if ($('view-review').hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  const k = e.key.toLowerCase();
  if ((t instanceof HTMLInputElement && t.type !== 'checkbox') || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
  if ((t instanceof HTMLButtonElement || t instanceof HTMLInputElement) && (k === 'enter' || k === ' ')) return;
  const acts = { j: () => reviewStep(1), arrowright: () => reviewStep(1), k: () => reviewStep(-1), arrowleft: () => reviewStep(-1),
    a: reviewAccept, e: reviewOpen, enter: reviewOpen, r: openReview };
  if (acts[k] && !review.loading) {
    e.preventDefault();
    acts[k]();
  }
});

// ---------- exports ----------

const exportNames = { coco: 'coco.json', yolo: 'yolo.zip', labelstudio: 'labelstudio.json' };

$('export-form').addEventListener('click', async (e) => {
  const kind = e.target.dataset && e.target.dataset.export;
  if (!kind) return;
  $('export-error').textContent = '';
  const q = {};
  const tag = $('export-tag').value.trim();
  if (tag) q.tag = tag;
  if (kind === 'yolo' && $('export-images').checked) q.images = '1';
  if (kind !== 'yolo' && $('export-predictions').checked) q.predictions = '1';
  await busy(e.target, async () => {
    try {
      const name = await download(`/api/v1/exports/${kind}`, q, exportNames[kind]);
      say(`Downloaded ${name}.`);
    } catch (err) {
      fail('export-error', err);
    }
  });
});
$('export-form').addEventListener('submit', (e) => e.preventDefault());

$('import-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('import-error').textContent = '';
  $('import-result').textContent = '';
  const file = $('import-file').files[0];
  if (!file) {
    $('import-error').textContent = 'Choose a Label Studio JSON file.';
    return;
  }
  await busy(e.submitter || e.target.querySelector('button[type=submit]'), async () => {
    try {
      let tasks;
      try {
        tasks = JSON.parse(await file.text());
      } catch (err) {
        throw new Error(`${file.name} is not JSON: ${err.message}`);
      }
      const r = await api('POST', '/api/v1/imports/labelstudio', { json: tasks });
      const skipped = (r.skipped || []).map((s) => `task ${s.task}: ${s.reason}`);
      $('import-result').textContent = `Imported ${r.imported} annotation${r.imported === 1 ? '' : 's'}` +
        (skipped.length ? `; skipped ${skipped.length}: ${skipped.slice(0, 5).join('; ')}${skipped.length > 5 ? '…' : ''}` : '.');
      $('import-file').value = '';
    } catch (err) {
      fail('import-error', err);
    }
  });
});

// ---------- start ----------

if (session.token) loadModels().then(route);
else route();
