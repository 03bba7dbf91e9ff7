// The account: profile, password change (which signs out every other session), erasure.

import {ApiError, api, endSession} from './api.js';
import {alertBox, field, h, problemText, show} from './ui.js';

export function accountPage(profile) {
  const current = h('input', {type: 'password', autocomplete: 'current-password', required: true});
  const fresh = h('input', {type: 'password', autocomplete: 'new-password', required: true, minlength: 8});
  const again = h('input', {type: 'password', autocomplete: 'new-password', required: true, minlength: 8});
  const passwordMessage = h('div', {class: 'messages'});
  const passwordForm = h('form', {class: 'card', 'aria-labelledby': 'password-heading', onsubmit: async (event) => {
    event.preventDefault();
    passwordMessage.replaceChildren();
    if (fresh.value !== again.value) {
      passwordMessage.replaceChildren(alertBox('The new passwords differ.'));
      again.focus();
      return;
    }
    try {
      await api('/api/auth/password', {
        method: 'POST', body: {current_password: current.value, new_password: fresh.value},
      });
      passwordForm.reset();
      passwordMessage.replaceChildren(alertBox('Password changed. Every other session was signed out.', 'success'));
    } catch (error) {
      const text = error instanceof ApiError && error.type === 'invalid-credentials'
        ? 'The current password is wrong.' : problemText(error);
      passwordMessage.replaceChildren(alertBox(text));
    }
  }},
  h('h2', {id: 'password-heading'}, 'Change password'),
  passwordMessage,
  field('Current password', current),
  field('New password', fresh, 'At least 8 characters; common or easily guessed passwords are refused.'),
  field('New password again', again),
  h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Change password')));

  const erasePassword = h('input', {type: 'password', autocomplete: 'current-password', required: true});
  const confirm = h('input', {type: 'checkbox', required: true});
  const eraseMessage = h('div', {class: 'messages'});
  const eraseForm = h('form', {class: 'card danger-zone', 'aria-labelledby': 'erase-heading', onsubmit: async (event) => {
    event.preventDefault();
    eraseMessage.replaceChildren();
    try {
      await api('/api/auth/me', {method: 'DELETE', body: {password: erasePassword.value}});
      endSession();
      location.hash = '#/login?erased';
    } catch (error) {
      const text = error instanceof ApiError && error.type === 'invalid-credentials'
        ? 'The password is wrong.' : problemText(error);
      eraseMessage.replaceChildren(alertBox(text));
    }
  }},
  h('h2', {id: 'erase-heading'}, 'Erase account'),
  h('p', {}, 'Your personal data (e-mail, name, every task\'s text) is made unreadable for good, in the event log too. The log keeps that events happened, so it still verifies.'),
  eraseMessage,
  field('Password', erasePassword),
  h('div', {class: 'check'}, confirm, h('label', {for: (confirm.id = 'erase-confirm')}, 'I understand that this cannot be undone')),
  h('div', {class: 'actions'}, h('button', {type: 'submit', class: 'danger'}, 'Erase my account')));

  show(h('h1', {}, 'Account'),
    h('dl', {class: 'card profile'},
      h('div', {}, h('dt', {}, 'Name'), h('dd', {}, profile.display_name)),
      h('div', {}, h('dt', {}, 'E-mail'), h('dd', {}, profile.email)),
      h('div', {}, h('dt', {}, 'Roles'), h('dd', {}, profile.roles.length ? profile.roles.join(', ') : 'none'))),
    passwordForm, eraseForm);
}
