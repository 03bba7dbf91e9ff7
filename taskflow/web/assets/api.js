// The API client and the session.
//
// The access token is kept in this module's memory only: never in storage, never in a URL.
// The session survives a reload through the refresh cookie (httpOnly, sent to /api/auth only),
// which POST /api/auth/refresh rotates; it needs application/json and a same-site header.
// An expiring token is refreshed silently a minute before its end, and a request answered 401
// for its token is refreshed and sent again, once.

const SAME_SITE = {'Content-Type': 'application/json', 'X-Requested-With': 'taskflow-console'};
const POSITION = 'X-TaskFlow-Position';

let accessToken = null;
let refreshTimer = null;
let refreshing = null;
let lastPosition = null;  // the latest write's place in the log: reads wait for it
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, problem, headers) {
    super(problem && (problem.detail || problem.title) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.headers = headers;
  }

  get type() {
    return (this.problem.type || '').replace('urn:taskflow:problem:', '');
  }
}

export function signedIn() {
  return accessToken !== null;
}

/** Call `listener(signedIn)` whenever the session starts or ends. */
export function onSession(listener) {
  listeners.add(listener);
}

function setToken(token, expiresIn) {
  const was = accessToken !== null;
  accessToken = token;
  clearTimeout(refreshTimer);
  if (token) {
    // A minute before the end (a fifth of a short lifetime): a request never waits for it.
    const lifetime = expiresIn || 900;
    const seconds = lifetime > 300 ? lifetime - 60 : lifetime * 0.8;
    refreshTimer = setTimeout(() => { refresh(); }, seconds * 1000);
  }
  if (was !== (token !== null)) listeners.forEach((listener) => listener(token !== null));
}

/** A new access token from the refresh cookie; false when there is no session to resume. */
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const response = await fetch('/api/auth/refresh', {method: 'POST', headers: SAME_SITE, body: '{}'});
        if (!response.ok) {
          setToken(null);
          return false;
        }
        const body = await response.json();
        setToken(body.access_token, body.expires_in);
        return true;
      } catch (error) {
        return false;  // offline: the token in memory, if any, stays until it is refused
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

export async function login(email, password) {
  const response = await fetch('/api/auth/login', {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({email, password}),
  });
  if (!response.ok) throw new ApiError(response.status, await problemOf(response), response.headers);
  const body = await response.json();
  setToken(body.access_token, body.expires_in);
}

export async function logout() {
  try {
    if (accessToken) {
      await fetch('/api/auth/logout', {
        method: 'POST',
        headers: {...SAME_SITE, Authorization: `Bearer ${accessToken}`},
        body: '{}',
      });
    }
  } finally {
    lastPosition = null;
    setToken(null);
  }
}

/** Forget the session without asking the server (the account was erased). */
export function endSession() {
  lastPosition = null;
  setToken(null);
}

/**
 * A request to the API: `{status, data, headers}`; ApiError for a problem.
 * `body` is sent as JSON; `fresh` asks a read to reflect this tab's latest write.
 */
export async function api(path, {method = 'GET', body, headers = {}, fresh = false, retried = false} = {}) {
  const init = {method, headers: {...headers}};
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (accessToken) init.headers.Authorization = `Bearer ${accessToken}`;
  if (fresh && lastPosition) init.headers[POSITION] = lastPosition;
  const response = await fetch(path, init);
  if (response.status === 401 && !retried) {
    const problem = await problemOf(response);
    // Only a token problem is worth a refresh: a wrong password is a 401 too.
    if (problem.type === 'urn:taskflow:problem:invalid-token' && await refresh()) {
      return api(path, {method, body, headers, fresh, retried: true});
    }
    throw new ApiError(401, problem, response.headers);
  }
  if (!response.ok && response.status !== 304) {
    throw new ApiError(response.status, await problemOf(response), response.headers);
  }
  const position = response.headers.get(POSITION);
  if (position && method !== 'GET') lastPosition = position;
  const type = response.headers.get('Content-Type') || '';
  const data = response.status === 204 || response.status === 304 || !type.includes('json')
    ? null : await response.json();
  return {status: response.status, data, headers: response.headers};
}

export async function get(path, options = {}) {
  return (await api(path, options)).data;
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch (error) {
    return {title: response.statusText};
  }
}

/** `"3"` → 3 */
export function versionOf(headers) {
  const etag = headers.get('ETag') || '';
  return Number(etag.replace(/^W\//, '').replaceAll('"', '')) || null;
}
