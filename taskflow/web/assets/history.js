// A task's history (who changed what, when: read from the event log) and time travel: the
// task as it was at any version or instant, folded from the log by the API.

import {ApiError, get} from './api.js';
import {subscribe} from './live.js';
import {
  PRIORITY_LABELS, STATUS_LABELS, alertBox, debounce, field, fromLocalInput, h, problemText,
  show, timeEl, toLocalInput, when,
} from './ui.js';

const FIELDS = ['title', 'description', 'status', 'priority', 'due_at', 'tags'];
const LABELS = {title: 'Title', description: 'Description', status: 'Status', priority: 'Priority', due_at: 'Due', tags: 'Tags'};

function value(name, raw) {
  if (raw === null || raw === undefined || raw === '' || (Array.isArray(raw) && !raw.length)) return '—';
  if (name.endsWith('status')) return STATUS_LABELS[raw] || raw;
  if (name.endsWith('priority')) return PRIORITY_LABELS[raw] || raw;
  if (name === 'due_at') return when(raw);
  if (Array.isArray(raw)) return raw.join(', ');
  return String(raw);
}

function sentence(name) {
  const words = name.replaceAll('_', ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** What an event changed, in words: "title → Write the report". */
function describe(entry) {
  const items = Object.entries(entry.changes)
    .filter(([name]) => !['owner_id', 'task_id'].includes(name))
    .map(([name, raw]) => h('li', {}, h('span', {class: 'field-name'}, LABELS[name] || sentence(name)), ' → ', value(name, raw)));
  return items.length ? h('ul', {class: 'changes'}, items) : null;
}

function snapshotCard(task, current) {
  const rows = FIELDS.map((name) => {
    const differs = current && JSON.stringify(task[name]) !== JSON.stringify(current[name]);
    return h('div', {class: differs ? 'differs' : ''},
      h('dt', {}, LABELS[name]),
      h('dd', {}, value(name, task[name]), differs ? h('span', {class: 'badge changed'}, 'changed since') : null));
  });
  return h('dl', {class: 'snapshot'}, rows,
    h('div', {}, h('dt', {}, 'Version'), h('dd', {}, String(task.version))),
    h('div', {}, h('dt', {}, 'Last change'), h('dd', {}, timeEl(task.updated_at, true))),
    task.deleted ? h('div', {}, h('dt', {}, 'State'), h('dd', {}, h('span', {class: 'badge danger'}, 'Deleted'))) : null);
}

export function historyPage(taskId, profile) {
  const heading = h('h1', {}, 'Task history');
  const currentBox = h('div', {class: 'card'});
  const timeline = h('ol', {class: 'timeline', 'aria-label': 'Events, oldest first'});
  const more = h('button', {type: 'button', class: 'secondary', hidden: true, onclick: () => loadHistory()}, 'Load more events');
  const message = h('div', {class: 'messages'});
  const snapshotBox = h('div', {class: 'snapshot-box', 'aria-live': 'polite'});
  const slider = h('input', {type: 'range', min: 1, max: 1, step: 1, value: 1});
  const sliderField = field('Version', slider);
  const sliderOutput = h('output', {for: slider.id}, '');
  const asOf = h('input', {type: 'datetime-local', step: 1});
  let current = null;
  let last = 0;
  let after = 0;

  async function loadCurrent() {
    // The live task; a deleted one is not listed, so it is shown as the log has it last.
    try {
      current = await get(`/api/tasks/${taskId}`, {fresh: true});
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404) || !last) throw error;
      current = await get(`/api/tasks/${taskId}?version=${last}`);
    }
    heading.textContent = `History of “${current.title}”`;
    document.title = `${heading.textContent} · TaskFlow`;
    currentBox.replaceChildren(h('h2', {}, 'Now'), snapshotCard(current, null));
  }

  async function loadHistory() {
    const page = await get(`/api/tasks/${taskId}/history?after_version=${after}&limit=50`);
    for (const entry of page.items) {
      const who = entry.actor === profile.user_id ? 'you' : entry.actor;
      timeline.append(h('li', {class: 'event', dataset: {version: entry.version}},
        h('div', {class: 'event-head'},
          h('span', {class: 'version'}, `v${entry.version}`),
          h('strong', {}, entry.type.replace(/^Task/, '').replace(/([a-z])([A-Z])/g, '$1 $2')),
          h('span', {class: 'who'}, ' by ', who),
          h('span', {class: 'when'}, ' · ', timeEl(entry.recorded_at, true))),
        describe(entry),
        h('button', {type: 'button', class: 'link', onclick: () => travelTo(entry.version)}, `Show version ${entry.version}`)));
      last = Math.max(last, entry.version);
    }
    after = last;
    more.hidden = !page.next;
    slider.max = String(last);
  }

  async function travel(params, label) {
    try {
      const task = await get(`/api/tasks/${taskId}?${params}`);
      snapshotBox.replaceChildren(h('h3', {}, label), snapshotCard(task, current));
      slider.value = String(task.version);
      sliderOutput.textContent = `Version ${task.version} of ${last}`;
    } catch (error) {
      const text = error instanceof ApiError && error.status === 404
        ? 'The task did not exist yet at that time.' : problemText(error);
      snapshotBox.replaceChildren(alertBox(text));
    }
  }

  function travelTo(version) {
    travel(`version=${version}`, `As it was at version ${version}`);
    slider.focus();
  }

  slider.addEventListener('input', debounce(() => travel(`version=${slider.value}`, `As it was at version ${slider.value}`), 150));
  const asOfForm = h('form', {class: 'inline', onsubmit: (event) => {
    event.preventDefault();
    if (!asOf.value) return;
    const instant = fromLocalInput(asOf.value);
    travel(`as_of=${encodeURIComponent(instant)}`, `As it was on ${when(instant, true)}`);
  }}, field('As of', asOf), h('button', {type: 'submit', class: 'secondary'}, 'Show'));

  show(
    h('p', {}, h('a', {href: '#/tasks'}, '← All tasks')),
    heading,
    message,
    h('div', {class: 'columns'},
      h('div', {}, currentBox,
        h('section', {class: 'card', 'aria-labelledby': 'travel-heading'},
          h('h2', {id: 'travel-heading'}, 'Time travel'),
          h('p', {class: 'hint'}, 'Move the slider, or pick an instant, to see the task as it was then.'),
          sliderField, sliderOutput,
          asOfForm,
          snapshotBox)),
      h('section', {class: 'card', 'aria-labelledby': 'timeline-heading'},
        h('h2', {id: 'timeline-heading'}, 'Timeline'),
        timeline, more)));

  (async () => {
    try {
      await loadHistory();
      await loadCurrent();
      asOf.value = toLocalInput(current.updated_at);
      travel(`version=${last}`, `As it was at version ${last}`);
    } catch (error) {
      message.replaceChildren(alertBox(error instanceof ApiError && error.status === 404
        ? 'No such task.' : problemText(error)));
    }
  })();

  const refreshSoon = debounce(async () => {
    await loadHistory();
    await loadCurrent();
  }, 300);
  return subscribe({
    change(change) {
      if (change.id === taskId) refreshSoon();
    },
    reset: refreshSoon,
  });
}
