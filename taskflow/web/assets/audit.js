// Auditors: the global feed (paged, filtered by stream and event type), one stream's commits,
// the projections' status, and verifications of the log run as background jobs.

import {api, get} from './api.js';
import {alertBox, field, h, problemText, select, show, timeEl} from './ui.js';

const PAGE = 100;
const WANTED = 25;  // with a filter on, pages are read until this many commits match
const POLL_MS = 1000;

export const EVENT_TYPES = [
  'TaskCreated', 'TaskRenamed', 'TaskDescriptionChanged', 'TaskStatusChanged', 'TaskPriorityChanged',
  'TaskDueDateSet', 'TaskDueDateCleared', 'TaskTagged', 'TaskUntagged', 'TaskDeleted', 'TaskRestored',
  'UserRegistered', 'UserPasswordChanged', 'UserRoleGranted', 'UserErased',
];

function auditNav(current) {
  const links = [['#/audit', 'Event feed'], ['#/audit/projections', 'Projections'], ['#/audit/verify', 'Verification']];
  return h('nav', {class: 'subnav', 'aria-label': 'Audit'}, h('ul', {},
    links.map(([href, text]) => h('li', {}, h('a', {href, 'aria-current': href === current ? 'page' : null}, text)))));
}

function streamLink(streamId) {
  return h('a', {href: `#/audit/stream/${streamId}`, class: 'mono'}, streamId);
}

function commitRow(commit, withStream = true) {
  const types = commit.events.map((e) => e.type);
  const range = commit.first_version === commit.last_version
    ? `v${commit.first_version}` : `v${commit.first_version}–${commit.last_version}`;
  return h('tr', {},
    h('td', {class: 'num'}, String(commit.position)),
    withStream ? h('td', {}, streamLink(commit.stream_id)) : null,
    h('td', {}, range),
    h('td', {}, types.join(', ')),
    h('td', {class: 'mono'}, commit.metadata ? commit.metadata.actor : ''),
    h('td', {}, timeEl(commit.recorded_at, true)));
}

function commitTable(caption, withStream) {
  const body = h('tbody', {});
  const table = h('table', {class: 'data'},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {},
      h('th', {scope: 'col'}, 'Position'),
      withStream ? h('th', {scope: 'col'}, 'Stream') : null,
      h('th', {scope: 'col'}, 'Versions'),
      h('th', {scope: 'col'}, 'Events'),
      h('th', {scope: 'col'}, 'Actor'),
      h('th', {scope: 'col'}, 'Recorded'))),
    body);
  return [h('div', {class: 'table-wrap'}, table), body];
}

export function feedPage() {
  const kind = select([['', 'All streams'], ['task', 'Tasks'], ['user', 'Users']], '', {name: 'kind'});
  const stream = h('input', {type: 'text', name: 'stream', autocomplete: 'off', placeholder: 'task-… or user-…', spellcheck: false});
  const type = select([['', 'Any type'], ...EVENT_TYPES.map((t) => [t, t])], '', {name: 'type'});
  const [table, body] = commitTable('Commits of the event log, in log order', true);
  const more = h('button', {type: 'button', class: 'secondary', onclick: () => load()}, 'Load more');
  const status = h('p', {class: 'hint', role: 'status'});
  const message = h('div', {class: 'messages'});
  let after = 0;
  let end = false;
  let shown = 0;
  let generation = 0;

  const matches = (commit) => (!kind.value || commit.stream_id.startsWith(`${kind.value}-`))
    && (!stream.value.trim() || commit.stream_id.startsWith(stream.value.trim()))
    && (!type.value || commit.events.some((e) => e.type === type.value));

  async function load() {
    const mine = generation;
    more.disabled = true;
    let added = 0;
    try {
      do {
        const page = await get(`/api/audit/events?after=${after}&limit=${PAGE}`);
        if (mine !== generation) return;
        for (const commit of page.items.filter(matches)) {
          body.append(commitRow(commit));
          added += 1;
        }
        after = page.next_after;
        end = page.end;
      } while (!end && added < WANTED);
      shown += added;
      status.textContent = `${shown} commits shown, up to position ${after}${end ? ' (the head of the log)' : ''}.`;
    } catch (error) {
      message.replaceChildren(alertBox(problemText(error)));
    } finally {
      more.disabled = false;
      more.textContent = end ? 'Check for newer commits' : 'Load more';
    }
  }

  function restart() {
    generation += 1;
    after = 0;
    end = false;
    shown = 0;
    body.replaceChildren();
    load();
  }

  const filters = h('form', {class: 'filters audit-filters', 'aria-label': 'Filter the feed', onsubmit: (e) => { e.preventDefault(); restart(); }},
    field('Stream kind', kind), field('Stream id starts with', stream), field('Event type', type),
    h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Apply')));
  kind.addEventListener('change', restart);
  type.addEventListener('change', restart);
  show(h('h1', {}, 'Audit'), auditNav('#/audit'), h('h2', {}, 'Event feed'), filters, message, table, status, more);
  load();
}

export async function streamPage(streamId) {
  const message = h('div', {class: 'messages'});
  const [table, body] = commitTable(`Every commit of ${streamId}`, false);
  const events = h('div', {class: 'events'});
  show(h('p', {}, h('a', {href: '#/audit'}, '← Event feed')), h('h1', {}, 'Stream ', h('span', {class: 'mono'}, streamId)),
    auditNav(null), message, table, h('h2', {}, 'Events'), events);
  try {
    const page = await get(`/api/audit/streams/${encodeURIComponent(streamId)}`);
    for (const commit of page.items) {
      body.append(commitRow(commit, false));
      for (const event of commit.events) {
        events.append(h('details', {class: 'event-detail'},
          h('summary', {}, `v${event.version} ${event.type}`),
          h('pre', {}, JSON.stringify({...event.data}, null, 2)),
          h('p', {class: 'hint mono'}, `hash ${commit.hash.slice(0, 16)}… after ${commit.prev_hash.slice(0, 16) || 'genesis'}…`)));
      }
    }
  } catch (error) {
    message.replaceChildren(alertBox(problemText(error)));
  }
}

export function projectionsPage() {
  const message = h('div', {class: 'messages'});
  const body = h('tbody', {});
  const head = h('p', {class: 'hint', role: 'status'});
  async function load() {
    try {
      const data = await get('/api/audit/projections');
      head.textContent = `The log's head is at position ${data.head}.`;
      body.replaceChildren(...data.items.map((p) => h('tr', {},
        h('th', {scope: 'row', class: 'mono'}, p.name),
        h('td', {class: 'num'}, String(p.position)),
        h('td', {class: 'num'}, h('span', {class: p.lag ? 'badge warn' : 'badge ok'}, p.lag ? `${p.lag} behind` : 'caught up')),
        h('td', {class: 'mono'}, p.lease_holder || '—'),
        h('td', {}, p.lease_expires_at ? timeEl(p.lease_expires_at, true) : '—'))));
    } catch (error) {
      message.replaceChildren(alertBox(problemText(error)));
    }
  }
  show(h('h1', {}, 'Audit'), auditNav('#/audit/projections'), h('h2', {}, 'Projections'), message, head,
    h('div', {class: 'table-wrap'}, h('table', {class: 'data'},
      h('caption', {}, 'Each projection, how far it has applied the log, and who holds its lease'),
      h('thead', {}, h('tr', {},
        h('th', {scope: 'col'}, 'Projection'), h('th', {scope: 'col'}, 'Position'), h('th', {scope: 'col'}, 'Lag'),
        h('th', {scope: 'col'}, 'Lease holder'), h('th', {scope: 'col'}, 'Lease expires'))),
      body)),
    h('div', {class: 'actions'}, h('button', {type: 'button', class: 'secondary', onclick: load}, 'Refresh')));
  load();
}

const STATE_TEXT = {
  running: 'Running', passed: 'Passed', failed: 'Failed', error: 'Could not finish',
  interrupted: 'Interrupted', superseded: 'Superseded',
};

function jobCard(job) {
  const p = job.progress;
  const result = job.result;
  return h('div', {class: `job state-${job.state}`},
    h('p', {class: 'job-state'}, h('span', {class: `badge state-${job.state}`}, STATE_TEXT[job.state] || job.state),
      ' started ', timeEl(job.started_at, true), job.finished_at ? [' · ended ', timeEl(job.finished_at, true)] : null),
    job.state === 'running' ? [
      h('label', {for: `progress-${job.id}`}, p.phase === 'log' ? 'Checking the log' : 'Checking the read models'),
      h('progress', {id: `progress-${job.id}`, max: Math.max(p.head, 1), value: p.position}, `${p.position} of ${p.head}`),
    ] : null,
    result ? [
      h('p', {class: result.ok ? 'summary ok' : 'summary failed'}, result.summary),
      h('p', {class: 'hint'}, result.sealed),
      result.findings.length
        ? h('ul', {class: 'findings', 'aria-label': 'Findings'}, result.findings.map((line) => h('li', {class: 'mono'}, line)))
        : null,
    ] : null,
    job.error ? alertBox(job.error) : null);
}

export function verifyPage() {
  const current = h('div', {class: 'card', 'aria-live': 'polite'});
  const earlier = h('tbody', {});
  const message = h('div', {class: 'messages'});
  const run = h('button', {type: 'button'}, 'Run verification');
  let timer = null;

  function render(jobs) {
    const [latest, ...rest] = jobs;
    current.replaceChildren(h('h3', {}, 'Latest verification'),
      latest ? jobCard(latest) : h('p', {}, 'No verification has run yet.'));
    earlier.replaceChildren(...rest.map((job) => h('tr', {},
      h('td', {}, timeEl(job.started_at, true)),
      h('td', {}, h('span', {class: `badge state-${job.state}`}, STATE_TEXT[job.state] || job.state)),
      h('td', {}, job.result ? job.result.summary : (job.error || '')))));
    run.disabled = Boolean(latest && latest.state === 'running');
    clearTimeout(timer);
    if (latest && latest.state === 'running') timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    try {
      render((await get('/api/audit/verifications')).items);
    } catch (error) {
      message.replaceChildren(alertBox(problemText(error)));
    }
  }

  run.addEventListener('click', async () => {
    message.replaceChildren();
    run.disabled = true;
    try {
      await api('/api/audit/verifications', {method: 'POST'});
      await poll();
    } catch (error) {
      message.replaceChildren(alertBox(problemText(error)));
      run.disabled = false;
    }
  });

  show(h('h1', {}, 'Audit'), auditNav('#/audit/verify'), h('h2', {}, 'Verification'),
    h('p', {class: 'lead'}, 'Recomputes every stream\'s hash chain and the seals over the whole log, checks that no position is missing, and compares every task view with the log. It runs in the background; one at a time.'),
    message, h('div', {class: 'actions'}, run), current,
    h('div', {class: 'table-wrap'}, h('table', {class: 'data'},
      h('caption', {}, 'Earlier verifications'),
      h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Started'), h('th', {scope: 'col'}, 'State'), h('th', {scope: 'col'}, 'Summary'))),
      earlier)));
  poll();
  return () => clearTimeout(timer);
}
