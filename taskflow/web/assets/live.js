// Live changes from other tabs and devices: the caller's change feed (server-sent events).
//
// EventSource cannot send an Authorization header, so each connection takes a one-time ticket
// (POST /api/stream-tickets) and names the last position it saw, so it resumes with exactly the
// changes it missed. A used ticket cannot reconnect: on any error the source is closed and a
// new one opened with a new ticket, after a pause.

import {api} from './api.js';

const RETRY_MS = 2000;
const subscribers = new Set();
let source = null;
let last = null;
let retryTimer = null;
let running = false;

function setStatus(text) {
  const el = document.getElementById('live');
  if (el) {
    el.textContent = text;
    el.dataset.state = text;
  }
}

async function open() {
  if (!running) return;
  try {
    const {data} = await api('/api/stream-tickets', {method: 'POST'});
    if (!running) return;
    const after = last ? `&after=${encodeURIComponent(last)}` : '';
    source = new EventSource(`/api/tasks/changes?ticket=${encodeURIComponent(data.ticket)}${after}`);
  } catch (error) {
    schedule();
    return;
  }
  source.addEventListener('ready', (event) => {
    last = event.lastEventId || last;
    setStatus('live');
  });
  source.onmessage = (event) => {
    last = event.lastEventId || last;
    const change = JSON.parse(event.data);
    subscribers.forEach((subscriber) => subscriber.change(change));
  };
  source.addEventListener('reset', (event) => {
    last = event.lastEventId || last;  // too far behind: reload, then go on from here
    subscribers.forEach((subscriber) => subscriber.reset());
  });
  source.addEventListener('end', (event) => {
    const {after} = JSON.parse(event.data);
    if (after !== null && after !== undefined) last = String(after);
    reconnect();
  });
  source.onerror = reconnect;
}

function reconnect() {
  if (source) source.close();
  source = null;
  setStatus('reconnecting');
  schedule();
}

function schedule() {
  clearTimeout(retryTimer);
  if (running) retryTimer = setTimeout(open, RETRY_MS);
}

/** Start following the feed (once per session). */
export function startFeed() {
  if (running) return;
  running = true;
  last = null;
  setStatus('connecting');
  open();
}

export function stopFeed() {
  running = false;
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
  setStatus('offline');
}

/** `{change(data), reset()}` is told of every change until the returned function is called. */
export function subscribe(subscriber) {
  subscribers.add(subscriber);
  return () => subscribers.delete(subscriber);
}
