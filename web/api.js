// Talks to the runner's REST API (see docs/api.md). Keeps the bearer token in
// sessionStorage; asks for it (once, with a small dialog) when a call answers 401.

const TOKEN_KEY = 'runner.token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

function setToken(value) {
  try { sessionStorage.setItem(TOKEN_KEY, value); } catch { /* private mode */ }
}

let pendingAsk = null;

// Shows the token dialog; every caller that hits 401 meanwhile waits on the same ask.
function askToken(rejected) {
  if (pendingAsk) return pendingAsk;
  const dialog = document.getElementById('token-dialog');
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  const error = document.getElementById('token-error');
  error.textContent = rejected ? 'That token was not accepted. Try again.' : '';
  input.value = '';
  pendingAsk = new Promise((resolve) => {
    const onSubmit = (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) { error.textContent = 'Enter the token.'; return; }
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('cancel', onCancel);
      setToken(value);
      dialog.close();
      pendingAsk = null;
      resolve(value);
    };
    const onCancel = (ev) => ev.preventDefault();  // the page is useless without it
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('cancel', onCancel);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
  return pendingAsk;
}

// fetch() against the API; resolves to parsed JSON (or text), throws ApiError.
export async function api(path, { method = 'GET', body, text = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: text ? 'text/plain' : 'application/json' };
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method, headers, cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, 'network', 'The runner cannot be reached.');
    }
    if (res.status === 401 && attempt < 5) {
      await askToken(Boolean(t));
      continue;
    }
    if (!res.ok) {
      let code = 'http_' + res.status;
      let message = `${res.status} ${res.statusText}`;
      try {
        const j = await res.json();
        if (j && j.error) {
          code = j.error.code || code;
          message = j.error.message || message;
        }
      } catch { /* not JSON */ }
      throw new ApiError(res.status, code, message);
    }
    if (text) return res.text();
    if (res.status === 204) return null;
    const ct = res.headers.get('content-type') || '';
    return ct.includes('json') ? res.json() : res.text();
  }
}

// URL for an EventSource: it cannot send headers, so the token rides in ?token=.
export function sseUrl(path) {
  const t = token();
  if (!t) return path;
  return path + (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(t);
}
