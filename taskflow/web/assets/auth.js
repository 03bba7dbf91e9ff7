// Signing in and registering.

import {ApiError, api, login} from './api.js';
import {alertBox, field, h, problemText, show} from './ui.js';

export function loginPage(notice) {
  const email = h('input', {type: 'email', name: 'email', autocomplete: 'username', required: true});
  const password = h('input', {type: 'password', name: 'password', autocomplete: 'current-password', required: true});
  const message = h('div', {class: 'messages'}, notice ? alertBox(notice, 'info') : null);
  const submit = h('button', {type: 'submit'}, 'Log in');
  const form = h('form', {class: 'card narrow', onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    message.replaceChildren();
    try {
      await login(email.value, password.value);
      location.hash = '#/tasks';
    } catch (error) {
      const text = error instanceof ApiError && error.status === 401
        ? 'Wrong e-mail or password.' : problemText(error);
      message.replaceChildren(alertBox(text));
      password.focus();
    } finally {
      submit.disabled = false;
    }
  }},
  h('h1', {}, 'Log in'),
  message,
  field('E-mail', email),
  field('Password', password),
  h('div', {class: 'actions'}, submit),
  h('p', {}, 'No account yet? ', h('a', {href: '#/register'}, 'Create one')));
  show(form);
}

export function registerPage() {
  const name = h('input', {type: 'text', name: 'display_name', autocomplete: 'name', required: true, maxlength: 100});
  const email = h('input', {type: 'email', name: 'email', autocomplete: 'email', required: true});
  const password = h('input', {type: 'password', name: 'password', autocomplete: 'new-password', required: true, minlength: 8});
  const message = h('div', {class: 'messages'});
  const submit = h('button', {type: 'submit'}, 'Create account');
  const form = h('form', {class: 'card narrow', onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    message.replaceChildren();
    try {
      await api('/api/auth/register', {
        method: 'POST',
        body: {display_name: name.value, email: email.value, password: password.value},
      });
      await login(email.value, password.value);
      location.hash = '#/tasks';
    } catch (error) {
      message.replaceChildren(alertBox(problemText(error)));
    } finally {
      submit.disabled = false;
    }
  }},
  h('h1', {}, 'Create an account'),
  message,
  field('Display name', name),
  field('E-mail', email),
  field('Password', password, 'At least 8 characters; common or easily guessed passwords are refused.'),
  h('div', {class: 'actions'}, submit),
  h('p', {}, 'Already registered? ', h('a', {href: '#/login'}, 'Log in')));
  show(form);
}
