// Small DOM helpers shared by every page: element building, toasts, times, labels.
// No inline styles or scripts anywhere: the page's Content-Security-Policy forbids them.

/** An element: h('button', {class: 'x', onclick: f}, 'text', child...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (name in el && typeof value !== 'string') {
      el[name] = value;  // properties such as checked, value, disabled
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** A labelled form control: the label wraps its text and the control, so it always names it. */
export function field(labelText, control, hint) {
  const id = control.id || uniqueId('f');
  control.id = id;
  const parts = [h('label', {for: id}, labelText), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute('aria-describedby', hintId);
    parts.push(h('small', {id: hintId, class: 'hint'}, hint));
  }
  return h('div', {class: 'field'}, parts);
}

let counter = 0;
export function uniqueId(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

export function select(options, value, attrs = {}) {
  // `selected` as an attribute: it is the default a form's reset() returns to.
  return h('select', attrs, options.map(([v, text]) => h('option', {value: v, selected: v === value ? 'selected' : null}, text)));
}

/** Replace the main region's content and move focus there, as a page change should. */
export function show(...children) {
  const main = document.getElementById('main');
  main.replaceChildren(...children.flat());
  const heading = main.querySelector('h1');
  document.title = heading ? `${heading.textContent} · TaskFlow` : 'TaskFlow';
  main.focus({preventScroll: true});
  window.scrollTo(0, 0);
}

const MAX_TOASTS = 3;

/** A message at the bottom of the screen, read out by screen readers; an optional action. */
export function toast(message, {action, onAction, timeout = 6000, kind = 'info'} = {}) {
  const box = document.getElementById('toasts');
  while (box.children.length >= MAX_TOASTS) box.firstElementChild.remove();
  const close = () => item.remove();
  const item = h('div', {class: `toast ${kind}`},
    h('span', {}, message),
    action ? h('button', {type: 'button', class: 'link', onclick: () => { close(); onAction(); }}, action) : null,
    h('button', {type: 'button', class: 'link', 'aria-label': 'Dismiss', onclick: close}, '×'));
  box.append(item);
  if (timeout) setTimeout(close, timeout);
  return item;
}

/** An inline error or notice, announced at once (role=alert). */
export function alertBox(message, kind = 'error') {
  return h('p', {class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status'}, message);
}

export function problemText(error) {
  const problem = error && error.problem;
  if (!problem) return String(error && error.message || error);
  if (problem.errors && problem.errors.length) {
    return problem.errors.map((e) => `${e.field}: ${e.message}`).join('; ');
  }
  return problem.detail || problem.title || `Error ${error.status}`;
}

const dateTime = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'short'});
const preciseTime = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'medium'});

export function when(iso, precise = false) {
  if (!iso) return '';
  return (precise ? preciseTime : dateTime).format(new Date(iso));
}

export function timeEl(iso, precise = false) {
  return h('time', {datetime: iso}, when(iso, precise));
}

/** An ISO instant as a datetime-local input's value (the browser's time zone). */
export function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A datetime-local input's value as an ISO instant with its zone (the API refuses naive times). */
export function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : null;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export const STATUS_LABELS = {todo: 'To do', in_progress: 'In progress', done: 'Done'};
export const PRIORITY_LABELS = {low: 'Low', medium: 'Medium', high: 'High', urgent: 'Urgent'};

export function parseTags(text) {
  return text.split(',').map((t) => t.trim()).filter(Boolean);
}
