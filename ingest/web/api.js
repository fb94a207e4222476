// The API client of the page. The token from sign-in is sent as a bearer
// header (kept in sessionStorage, so a reload keeps the tab signed in);
// the HttpOnly cookie the edge also sets makes images and downloads no
// easier, since they are fetched as blobs with the header anyway.

const KEY = 'gradeline.session';

export const session = load();

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY)) || { token: '', user: '' };
  } catch {
    return { token: '', user: '' };
  }
}

export function setSession(token, user) {
  session.token = token;
  session.user = user;
  if (token) sessionStorage.setItem(KEY, JSON.stringify(session));
  else sessionStorage.removeItem(KEY);
  for (const u of blobs.values()) u.then(URL.revokeObjectURL, () => {});
  blobs.clear();
}

/** An error answer of the edge: {code, message, details}. */
export class APIError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.details = (body && body.details) || [];
  }
  /** The message with its details, for people. */
  toString() {
    return this.details.length ? `${this.message}: ${this.details.join('; ')}` : this.message;
  }
}

/**
 * api sends one request. opts: json (a body sent as JSON), form (FormData),
 * query (an object or URLSearchParams), raw (answer the Response itself).
 */
export async function api(method, path, opts = {}) {
  const headers = {};
  if (session.token) headers.Authorization = 'Bearer ' + session.token;
  let body;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.form) {
    body = opts.form;
  }
  let url = path;
  if (opts.query) {
    const q = new URLSearchParams(opts.query);
    if ([...q.keys()].length) url += (url.includes('?') ? '&' : '?') + q;
  }
  let res;
  try {
    res = await fetch(url, { method, headers, body, credentials: 'same-origin' });
  } catch (e) {
    throw new APIError(0, { message: 'the server cannot be reached', details: [String(e.message || e)] });
  }
  if (res.status === 401 && session.token && !path.startsWith('/api/v1/auth/')) {
    setSession('', '');
    dispatchEvent(new CustomEvent('signed-out'));
  }
  if (!res.ok && res.status !== 304) {
    let b = null;
    try { b = await res.json(); } catch { /* not JSON: the status says it */ }
    throw new APIError(res.status, b);
  }
  if (opts.raw) return res;
  if (res.status === 204) return null;
  const ct = res.headers.get('Content-Type') || '';
  return ct.includes('json') ? res.json() : res.text();
}

// Object URLs of image bytes by image id: the content route needs the
// token, which an <img src> cannot send.
const blobs = new Map();

export function imageURL(id) {
  if (!blobs.has(id)) {
    const p = api('GET', `/api/v1/images/${encodeURIComponent(id)}/content`, { raw: true })
      .then((r) => r.blob()).then((b) => URL.createObjectURL(b));
    p.catch(() => blobs.delete(id));
    blobs.set(id, p);
  }
  return blobs.get(id);
}

/** download fetches path with the token and saves the answer as a file. */
export async function download(path, query, fallbackName) {
  const res = await api('GET', path, { query, raw: true });
  const cd = res.headers.get('Content-Disposition') || '';
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
  const name = m ? decodeURIComponent(m[1]) : fallbackName;
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return name;
}

/** The top n labels of a grade's scores, highest first. */
export function topScores(grade, n = 5) {
  const s = grade.scores || (grade.label ? { [grade.label]: grade.score || 0 } : {});
  return Object.entries(s).sort((a, b) => b[1] - a[1]).slice(0, n);
}

export const pct = (x) => `${(100 * (x || 0)).toFixed(1)}%`;
