// The console's entry point: resumes the session, follows the change feed, routes by hash.

import {accountPage} from './account.js';
import {get, logout, onSession, refresh, signedIn} from './api.js';
import {feedPage, projectionsPage, streamPage, verifyPage} from './audit.js';
import {loginPage, registerPage} from './auth.js';
import {historyPage} from './history.js';
import {startFeed, stopFeed} from './live.js';
import {trashPage, tasksPage} from './tasks.js';
import {alertBox, h, show} from './ui.js';

let profile = null;
let leave = null;  // the current page's clean-up (live subscriptions, timers)

const routes = [
  [/^#\/tasks$/, () => tasksPage(profile)],
  [/^#\/trash$/, () => trashPage()],
  [/^#\/task\/([0-9a-f]{32})$/, (id) => historyPage(id, profile)],
  [/^#\/audit$/, () => feedPage(), true],
  [/^#\/audit\/stream\/((?:task|user)-[0-9a-f]{32})$/, (id) => streamPage(id), true],
  [/^#\/audit\/projections$/, () => projectionsPage(), true],
  [/^#\/audit\/verify$/, () => verifyPage(), true],
  [/^#\/account$/, () => accountPage(profile)],
];

async function route() {
  if (leave) leave();
  leave = null;
  const hash = location.hash || '#/tasks';
  if (!signedIn()) {
    markNav(null);
    if (hash.startsWith('#/register')) registerPage();
    else loginPage(hash === '#/login?erased' ? 'Your account was erased.' : null);
    return;
  }
  if (!profile) return;  // the session is starting: it routes once the profile is here
  if (hash.startsWith('#/login') || hash.startsWith('#/register')) {
    location.replace('#/tasks');
    return;
  }
  for (const [pattern, page, auditorOnly] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    if (auditorOnly && !isAuditor()) break;
    markNav(hash);
    const result = page(...match.slice(1));
    leave = typeof result === 'function' ? result : null;
    return;
  }
  markNav(null);
  show(h('h1', {}, 'Not found'), alertBox('There is no such page here.', 'info'), h('p', {}, h('a', {href: '#/tasks'}, 'Go to your tasks')));
}

function isAuditor() {
  return Boolean(profile && profile.roles.includes('auditor'));
}

function markNav(hash) {
  const section = hash ? hash.split('/')[1] : null;
  for (const link of document.querySelectorAll('#nav a')) {
    const here = link.dataset.section === section || (section === 'task' && link.dataset.section === 'tasks');
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function sessionStarted() {
  profile = await get('/api/auth/me');
  document.getElementById('who').textContent = profile.display_name;
  document.querySelector('[data-auditor]').hidden = !isAuditor();
  document.getElementById('nav').hidden = false;
  document.getElementById('session').hidden = false;
  startFeed();
}

function sessionEnded() {
  profile = null;
  stopFeed();
  document.getElementById('nav').hidden = true;
  document.getElementById('session').hidden = true;
}

onSession(async (active) => {
  if (active) {
    await sessionStarted();
  } else {
    sessionEnded();
  }
  route();
});

document.getElementById('logout').addEventListener('click', async () => {
  await logout();
  location.hash = '#/login';
});

window.addEventListener('hashchange', route);

// A reload keeps the session: the refresh cookie gives a new access token.
(async () => {
  const resumed = await refresh();
  if (!resumed) route();  // onSession routes once the session is up
})();
