// The task list: filters, sort, search as you type, endless scroll; create, inline edit with
// conflicts shown, delete with undo; the trash. Changes from elsewhere arrive live.

import {ApiError, api, get, versionOf} from './api.js';
import {subscribe} from './live.js';
import {
  PRIORITY_LABELS, STATUS_LABELS, alertBox, debounce, field, fromLocalInput, h, parseTags,
  problemText, select, show, timeEl, toLocalInput, toast, uniqueId, when,
} from './ui.js';

const PAGE = 20;
const FIELD_LABELS = {
  title: 'Title', description: 'Description', status: 'Status', priority: 'Priority', due_at: 'Due', tags: 'Tags',
};

// -- shared pieces ------------------------------------------------------------------------------

/** Tag suggestions (the owner's tags, most used first) for every tag input of the page. */
class TagSuggestions {
  constructor() {
    this.tags = [];
    this.single = h('datalist', {id: uniqueId('tags')});
    this.refills = new Map();  // input -> its suggestions' refill, redone when the tags change
  }

  async load() {
    try {
      this.tags = (await get('/api/tasks/tags')).items;
    } catch (error) {
      this.tags = [];
    }
    this.single.replaceChildren(...this.tags.map((t) => h('option', {value: t.tag, label: `${t.tag} (${t.count})`})));
    for (const [input, refill] of this.refills) {
      if (input.isConnected) refill();
      else if (input.dataset.shown) this.refills.delete(input);  // its form is gone
    }
  }

  /** A comma-separated tags input whose suggestions complete the tag being typed. */
  input(value, attrs = {}) {
    const list = h('datalist', {id: uniqueId('tag-list')});
    const input = h('input', {type: 'text', value, list: list.id, autocomplete: 'off', ...attrs});
    const refill = () => {
      const parts = input.value.split(',');
      const typed = parts.pop().trim().toLowerCase();
      const head = parts.map((p) => p.trim()).filter(Boolean);
      const prefix = head.length ? `${head.join(', ')}, ` : '';
      const options = this.tags
        .filter((t) => t.tag.startsWith(typed) && !head.includes(t.tag))
        .slice(0, 20)
        .map((t) => h('option', {value: prefix + t.tag, label: `${t.tag} (${t.count})`}));
      list.replaceChildren(...options);
    };
    input.addEventListener('input', refill);
    input.addEventListener('focus', () => {
      input.dataset.shown = '1';
      refill();
    });
    this.refills.set(input, refill);
    return [input, list];
  }
}

function statusBadge(status) {
  return h('span', {class: `badge status-${status}`}, STATUS_LABELS[status]);
}

function priorityBadge(priority) {
  return h('span', {class: `badge priority-${priority}`}, `${PRIORITY_LABELS[priority]} priority`);
}

function isOverdue(task) {
  return task.due_at && task.status !== 'done' && new Date(task.due_at) < new Date();
}

function taskMeta(task) {
  return h('p', {class: 'meta'},
    statusBadge(task.status),
    priorityBadge(task.priority),
    task.due_at ? h('span', {class: isOverdue(task) ? 'due overdue' : 'due'},
      isOverdue(task) ? 'Overdue since ' : 'Due ', timeEl(task.due_at)) : null,
    task.tags.length ? h('span', {class: 'tags'}, task.tags.map((t) => h('span', {class: 'tag'}, `#${t}`))) : null);
}

async function stats() {
  const data = await get('/api/tasks/stats', {fresh: true});
  const open = data.by_status.todo + data.by_status.in_progress;
  return h('ul', {class: 'stats', 'aria-label': 'Summary'},
    [['todo', 'To do'], ['in_progress', 'In progress'], ['done', 'Done']].map(([key, label]) =>
      h('li', {class: `stat status-${key}`}, h('span', {class: 'num'}, data.by_status[key]), ` ${label}`)),
    h('li', {class: data.overdue ? 'stat overdue' : 'stat'}, h('span', {class: 'num'}, data.overdue), ' Overdue'),
    h('li', {class: 'stat'}, h('span', {class: 'num'}, open), ' Open'));
}

// -- the list ------------------------------------------------------------------------------------

export function tasksPage() {
  const tags = new TagSuggestions();
  const rows = new Map();  // id -> Row
  const filters = {q: '', status: '', priority: '', tag: '', due: '', sort: 'created', order: 'desc'};
  let next = null;
  let loading = false;
  let generation = 0;  // a newer search makes older answers moot
  // Tasks this tab has seen deleted (its own deletes, the feed's), by the deleting version: a
  // page read before the delete reached the read model still lists them, and must not bring
  // them back (nothing would take them away again: their deletion has been seen).
  const deletedAt = new Map();

  const statsBox = h('div', {class: 'stats-box', 'aria-live': 'polite'});
  const list = h('ul', {class: 'tasks', 'aria-label': 'Tasks'});
  const empty = h('p', {class: 'empty', hidden: true}, 'No tasks match.');
  const more = h('button', {type: 'button', class: 'secondary more', onclick: () => loadMore()}, 'Load more');
  const end = h('p', {class: 'end', hidden: true}, 'That is every task.');
  const listMessage = h('div', {class: 'messages'});

  const refreshStats = debounce(async () => {
    try {
      statsBox.replaceChildren(await stats());
    } catch (error) { /* the list says what is wrong */ }
    tags.load();
  }, 250);
  const reloadSoon = debounce(() => reload(), 300);

  function query(cursor) {
    const params = new URLSearchParams({limit: String(PAGE), sort: filters.sort, order: filters.order});
    if (filters.q.trim()) params.set('q', filters.q.trim());
    if (filters.status === 'open') params.set('status', 'todo,in_progress');
    else if (filters.status) params.set('status', filters.status);
    if (filters.priority) params.set('priority', filters.priority);
    if (filters.tag.trim()) params.set('tags', filters.tag.trim().toLowerCase());
    if (filters.due === 'overdue') params.set('overdue', 'true');
    if (filters.due === 'not-overdue') params.set('overdue', 'false');
    if (filters.due === 'week') {
      params.set('due_after', new Date().toISOString());
      params.set('due_before', new Date(Date.now() + 7 * 864e5).toISOString());
    }
    if (cursor) params.set('next', cursor);
    return `/api/tasks?${params}`;
  }

  async function reload() {
    generation += 1;
    next = null;
    await loadMore(true);
  }

  // A reload replaces the list when its first page arrives. A row already shown is kept when
  // the page is no newer (a page read before a change this tab has seen is older than the row),
  // and so is every row whose editor (or conflict view) is open, with its focus: a change
  // arriving from elsewhere mid-edit (a reload asked by the live feed) never takes the form from
  // under the person typing in it.
  function replaceList(items) {
    const shown = new Map(rows);
    const focused = document.activeElement;
    rows.clear();
    list.replaceChildren();
    for (const task of items) {
      if ((deletedAt.get(task.id) ?? 0) > task.version) continue;
      let row = shown.get(task.id);
      shown.delete(task.id);
      if (!row) row = new Row(task);
      else if (task.version > row.version) row.update(task);
      rows.set(task.id, row);
      list.append(row.el);
    }
    for (const [id, row] of shown) {
      if (!row.editing) continue;
      rows.set(id, row);
      list.append(row.el);
    }
    if (focused instanceof HTMLElement && list.contains(focused)) focused.focus();
  }

  async function loadMore(first = false) {
    if (loading && !first) return;
    if (!first && !next) return;
    const mine = generation;
    loading = true;
    list.setAttribute('aria-busy', 'true');
    try {
      const page = await get(query(first ? null : next), {fresh: true});
      if (mine !== generation) return;
      listMessage.replaceChildren();
      if (first) replaceList(page.items);
      else {
        for (const task of page.items) {
          if (rows.has(task.id)) continue;
          const row = new Row(task);
          rows.set(task.id, row);
          list.append(row.el);
        }
      }
      next = page.next;
    } catch (error) {
      if (mine === generation) listMessage.replaceChildren(alertBox(problemText(error)));
    } finally {
      if (mine === generation) {
        loading = false;
        list.removeAttribute('aria-busy');
        empty.hidden = rows.size > 0;
        more.hidden = !next;
        end.hidden = Boolean(next) || rows.size === 0;
      }
    }
  }

  // Endless scroll: the "Load more" button doubles as the sentinel (and works by keyboard).
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && next && !loading) loadMore();
  });
  observer.observe(more);

  class Row {
    constructor(task) {
      this.task = task;
      this.editing = null;
      this.el = h('li', {class: 'task', dataset: {id: task.id}});
      this.render();
    }

    get version() {
      return this.task.version;
    }

    render() {
      const task = this.task;
      this.editing = null;
      this.el.classList.remove('editing');
      const done = h('input', {
        type: 'checkbox', class: 'done-toggle', checked: task.status === 'done',
        'aria-label': `Done: ${task.title}`,
        onchange: () => this.save({status: done.checked ? 'done' : 'todo'}),
      });
      this.el.dataset.version = String(task.version);
      this.el.replaceChildren(
        h('div', {class: 'task-main'},
          done,
          h('div', {class: 'task-body'},
            h('h3', {class: 'task-title'}, task.title),
            task.description ? h('p', {class: 'description'}, task.description) : null,
            taskMeta(task))),
        h('div', {class: 'task-actions'},
          h('button', {type: 'button', class: 'secondary', onclick: () => this.edit(),
            'aria-label': `Edit ${task.title}`}, 'Edit'),
          h('a', {class: 'button secondary', href: `#/task/${task.id}`, 'aria-label': `History of ${task.title}`}, 'History'),
          h('button', {type: 'button', class: 'danger', onclick: () => this.remove(),
            'aria-label': `Delete ${task.title}`}, 'Delete')));
    }

    update(task) {
      this.task = task;
      if (this.editing) this.editing.newer(task.version);
      else this.render();
    }

    edit() {
      const base = this.task;
      const title = h('input', {type: 'text', value: base.title, required: true, maxlength: 200});
      const description = h('textarea', {rows: 3, maxlength: 10000}, base.description);
      const status = select(Object.entries(STATUS_LABELS), base.status);
      const priority = select(Object.entries(PRIORITY_LABELS), base.priority);
      const due = h('input', {type: 'datetime-local', value: toLocalInput(base.due_at)});
      const [tagInput, tagList] = tags.input(base.tags.join(', '));
      const notice = h('div', {class: 'messages'});
      const save = h('button', {type: 'submit'}, 'Save');
      const changes = () => {
        const patch = {};
        if (title.value.trim() !== base.title) patch.title = title.value;
        if (description.value !== base.description) patch.description = description.value;
        if (status.value !== base.status) patch.status = status.value;
        if (priority.value !== base.priority) patch.priority = priority.value;
        const dueAt = fromLocalInput(due.value);
        if (toLocalInput(dueAt) !== toLocalInput(base.due_at)) patch.due_at = dueAt;
        const tagValues = parseTags(tagInput.value);
        if (tagValues.join(',') !== base.tags.join(',')) patch.tags = tagValues;
        return patch;
      };
      const form = h('form', {class: 'edit-form', 'aria-label': `Edit ${base.title}`, onsubmit: async (event) => {
        event.preventDefault();
        const patch = changes();
        if (!Object.keys(patch).length) {
          this.render();
          return;
        }
        save.disabled = true;
        notice.replaceChildren();
        await this.save(patch, base.version, notice, base);
        save.disabled = false;
      }},
      notice,
      field('Title', title),
      field('Description', description),
      h('div', {class: 'row'}, field('Status', status), field('Priority', priority), field('Due', due)),
      field('Tags', tagInput, 'Separate tags with commas.'), tagList,
      h('div', {class: 'actions'},
        save,
        h('button', {type: 'button', class: 'secondary', onclick: () => { this.render(); this.el.querySelector('button').focus(); }}, 'Cancel')));
      this.editing = {
        newer: (version) => {
          notice.replaceChildren(alertBox(`This task was changed elsewhere (now version ${version}). Saving will show both versions.`, 'info'));
        },
      };
      this.el.classList.add('editing');
      this.el.replaceChildren(form);
      title.focus();
    }

    /** PATCH `patch` on `version`; a 412 shows the newer version with a way to retry on it. */
    async save(patch, version = this.task.version, notice = null, base = this.task) {
      try {
        const {data} = await api(`/api/tasks/${this.task.id}`, {
          method: 'PATCH', body: patch, headers: {'If-Match': `"${version}"`},
        });
        this.task = data;
        this.render();
        refreshStats();
        toast(`Saved “${data.title}”.`, {timeout: 3000});
      } catch (error) {
        if (error instanceof ApiError && error.status === 412) {
          await this.conflict(patch, error.problem.current_version, base);
          return;
        }
        const message = alertBox(problemText(error));
        if (notice) notice.replaceChildren(message);
        else toast(problemText(error), {kind: 'error'});
      }
    }

    async conflict(patch, current, base = this.task) {
      // The newer version read from the log itself: the read model may not have it yet.
      const theirs = await get(`/api/tasks/${this.task.id}?version=${current}`);
      const heading = h('h3', {tabindex: '-1'}, 'Changed elsewhere');
      const fields = Object.keys(FIELD_LABELS).filter((name) =>
        name in patch || JSON.stringify(theirs[name]) !== JSON.stringify(base[name]));
      const rowsOf = fields.map((name) => h('tr', {},
        h('th', {scope: 'row'}, FIELD_LABELS[name]),
        h('td', {}, shown(name, base[name])),
        h('td', {}, shown(name, theirs[name])),
        h('td', {}, name in patch ? shown(name, patch[name]) : '(unchanged)')));
      this.el.classList.add('editing');
      this.editing = {newer: () => {}};
      this.el.replaceChildren(h('section', {class: 'conflict', role: 'group', 'aria-label': 'Conflict'},
        heading,
        h('p', {}, `Someone saved version ${theirs.version} of “${theirs.title}” while you were editing version ${base.version}.`),
        h('div', {class: 'table-wrap'}, h('table', {},
          h('caption', {}, 'What each side changed'),
          h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Field'), h('th', {scope: 'col'}, `You started from (v${base.version})`),
            h('th', {scope: 'col'}, `Theirs (v${theirs.version})`), h('th', {scope: 'col'}, 'Yours'))),
          h('tbody', {}, rowsOf))),
        h('div', {class: 'actions'},
          h('button', {type: 'button', onclick: () => this.save(patch, theirs.version)}, 'Apply my changes to their version'),
          h('button', {type: 'button', class: 'secondary', onclick: () => {
            this.task = {...theirs};
            delete this.task.deleted;
            this.render();
          }}, 'Keep theirs'))));
      heading.focus();
    }

    async remove() {
      const task = this.task;
      try {
        const {headers} = await api(`/api/tasks/${task.id}`, {
          method: 'DELETE', headers: {'If-Match': `"${task.version}"`},
        });
        const deletedVersion = versionOf(headers);
        deletedAt.set(task.id, deletedVersion);
        const following = this.el.nextElementSibling || this.el.previousElementSibling;
        this.el.remove();
        rows.delete(task.id);
        empty.hidden = rows.size > 0;
        refreshStats();
        if (following) following.querySelector('button, input')?.focus();
        toast(`Deleted “${task.title}”.`, {
          action: 'Undo',
          timeout: 10000,
          onAction: () => restore(task, deletedVersion),
        });
      } catch (error) {
        toast(problemText(error), {kind: 'error'});
      }
    }
  }

  async function restore(task, version) {
    try {
      await api(`/api/tasks/${task.id}/restore`, {method: 'POST', headers: {'If-Match': `"${version}"`}});
      toast(`Restored “${task.title}”.`);
      await reload();
      refreshStats();
    } catch (error) {
      toast(problemText(error), {kind: 'error'});
    }
  }

  // -- the new-task form --
  const newTitle = h('input', {type: 'text', name: 'title', required: true, maxlength: 200, placeholder: 'What needs doing?'});
  const newDescription = h('textarea', {name: 'description', rows: 2, maxlength: 10000});
  const newPriority = select(Object.entries(PRIORITY_LABELS), 'medium', {name: 'priority'});
  const newDue = h('input', {type: 'datetime-local', name: 'due_at'});
  const [newTags, newTagList] = tags.input('', {name: 'tags'});
  const createMessage = h('div', {class: 'messages'});
  const createForm = h('form', {class: 'card create', 'aria-labelledby': 'new-task-heading', onsubmit: async (event) => {
    event.preventDefault();
    createMessage.replaceChildren();
    const body = {title: newTitle.value, priority: newPriority.value, tags: parseTags(newTags.value)};
    if (newDescription.value) body.description = newDescription.value;
    if (newDue.value) body.due_at = fromLocalInput(newDue.value);
    try {
      const {data} = await api('/api/tasks', {
        method: 'POST', body, headers: {'Idempotency-Key': crypto.randomUUID()},
      });
      createForm.reset();
      createForm.querySelector('details').open = false;
      newTitle.focus();
      toast(`Added “${data.title}”.`, {timeout: 3000});
      await reload();
      refreshStats();
    } catch (error) {
      createMessage.replaceChildren(alertBox(problemText(error)));
    }
  }},
  h('h2', {id: 'new-task-heading'}, 'New task'),
  createMessage,
  field('Title', newTitle),
  h('details', {},
    h('summary', {}, 'More details'),
    field('Description', newDescription),
    h('div', {class: 'row'}, field('Priority', newPriority), field('Due', newDue)),
    field('Tags', newTags, 'Separate tags with commas.'), newTagList),
  h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Add task')));

  // -- filters --
  const search = h('input', {type: 'search', name: 'q', placeholder: 'Search as you type', autocomplete: 'off'});
  search.addEventListener('input', debounce(() => { filters.q = search.value; reload(); }, 250));
  const onFilter = (name) => (event) => { filters[name] = event.target.value; reload(); };
  const statusFilter = select([['', 'Any status'], ['open', 'Open'], ...Object.entries(STATUS_LABELS)], '', {name: 'status', onchange: onFilter('status')});
  const priorityFilter = select([['', 'Any priority'], ...Object.entries(PRIORITY_LABELS)], '', {name: 'priority', onchange: onFilter('priority')});
  const tagFilter = h('input', {type: 'text', name: 'tag', list: tags.single.id, autocomplete: 'off', placeholder: 'Any tag'});
  tagFilter.addEventListener('change', onFilter('tag'));
  const dueFilter = select([['', 'Any due date'], ['overdue', 'Overdue'], ['week', 'Due within 7 days'], ['not-overdue', 'Not overdue']], '', {name: 'due', onchange: onFilter('due')});
  const sortFilter = select([['created', 'Created'], ['updated', 'Updated'], ['due', 'Due date'], ['priority', 'Priority']], 'created', {name: 'sort', onchange: onFilter('sort')});
  const orderFilter = select([['desc', 'Descending'], ['asc', 'Ascending']], 'desc', {name: 'order', onchange: onFilter('order')});
  const toolbar = h('form', {class: 'filters', role: 'search', 'aria-label': 'Filter tasks', onsubmit: (e) => e.preventDefault()},
    field('Search', search),
    field('Status', statusFilter),
    field('Priority', priorityFilter),
    field('Tag', tagFilter), tags.single,
    field('Due', dueFilter),
    field('Sort by', sortFilter),
    field('Order', orderFilter));

  show(
    h('h1', {}, 'Tasks'),
    statsBox,
    createForm,
    h('section', {class: 'list-section', 'aria-labelledby': 'list-heading'},
      h('h2', {id: 'list-heading', class: 'visually-hidden'}, 'Your tasks'),
      toolbar, listMessage, list, empty, more, end),
  );

  const unsubscribe = subscribe({
    change({id, etag, deleted, task}) {
      const version = Number(etag.replaceAll('"', ''));
      if (deleted) deletedAt.set(id, Math.max(version, deletedAt.get(id) ?? 0));
      const row = rows.get(id);
      if (row && version > row.version) {
        if (deleted && !row.editing) {
          row.el.remove();
          rows.delete(id);
        } else if (!deleted) {
          row.update(task);
        }
      } else if (!row && !deleted) {
        reloadSoon();  // where it belongs depends on the filters and the sort: ask the API
      }
      refreshStats();
    },
    reset() {
      reload();
      refreshStats();
    },
  });

  reload();
  refreshStats();
  return () => {
    unsubscribe();
    observer.disconnect();
  };
}

function shown(name, value) {
  if (value === null || value === undefined || value === '') return '—';
  if (name === 'tags') return value.length ? value.join(', ') : '—';
  if (name === 'due_at') return when(value);
  if (name === 'status') return STATUS_LABELS[value];
  if (name === 'priority') return PRIORITY_LABELS[value];
  return String(value);
}

// -- the trash -----------------------------------------------------------------------------------

export function trashPage() {
  const list = h('ul', {class: 'tasks', 'aria-label': 'Deleted tasks'});
  const empty = h('p', {class: 'empty', hidden: true}, 'The trash is empty.');
  const more = h('button', {type: 'button', class: 'secondary more', hidden: true, onclick: () => load(next)}, 'Load more');
  const message = h('div', {class: 'messages'});
  let next = null;

  async function load(cursor) {
    const params = new URLSearchParams({limit: String(PAGE)});
    if (cursor) params.set('next', cursor);
    try {
      const page = await get(`/api/tasks/trash?${params}`);
      if (!cursor) list.replaceChildren();
      for (const task of page.items) list.append(row(task));
      next = page.next;
      more.hidden = !next;
      empty.hidden = list.children.length > 0;
    } catch (error) {
      message.replaceChildren(alertBox(problemText(error)));
    }
  }

  function row(task) {
    const item = h('li', {class: 'task deleted', dataset: {id: task.id}},
      h('div', {class: 'task-main'}, h('div', {class: 'task-body'},
        h('h3', {class: 'task-title'}, task.title),
        h('p', {class: 'meta'}, 'Deleted ', timeEl(task.updated_at)),
        taskMeta(task))),
      h('div', {class: 'task-actions'},
        h('a', {class: 'button secondary', href: `#/task/${task.id}`, 'aria-label': `History of ${task.title}`}, 'History'),
        h('button', {type: 'button', 'aria-label': `Restore ${task.title}`, onclick: async () => {
          try {
            await api(`/api/tasks/${task.id}/restore`, {method: 'POST', headers: {'If-Match': `"${task.version}"`}});
            item.remove();
            empty.hidden = list.children.length > 0;
            toast(`Restored “${task.title}”.`);
          } catch (error) {
            toast(problemText(error), {kind: 'error'});
            load(null);
          }
        }}, 'Restore')));
    return item;
  }

  show(h('h1', {}, 'Trash'),
    h('p', {class: 'lead'}, 'Deleted tasks stay in the log and can be restored.'),
    message, list, empty, more);
  const reloadSoon = debounce(() => load(null), 300);
  const unsubscribe = subscribe({change: reloadSoon, reset: reloadSoon});
  load(null);
  return unsubscribe;
}
