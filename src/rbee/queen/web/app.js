// The page's shell: the session (sign in once, a cookie from then on), the router, the pages.
import { api, setUnauthorizedHandler } from "./lib.js";
import * as overview from "./overview.js";
import * as playground from "./playground.js";
import * as policy from "./policy.js";
import * as jobs from "./jobs.js";
import * as models from "./models.js";
import * as logs from "./logs.js";

const PAGES = { overview, playground, policy, jobs, models, logs };
const view = document.getElementById("view");
const dialog = document.getElementById("login");
let current = null;
let session = null;

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { name: PAGES[name] ? name : "overview", arg: rest.join("/") };
}

function show() {
  const { name, arg } = route();
  current?.stop?.();
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === `#/${name}`);
    if (link.hasAttribute("aria-current")) link.setAttribute("aria-current", "page");
  }
  view.replaceChildren();
  document.title = `rbee: ${name}`;
  current = PAGES[name];
  current.start(view, { arg, session });
}

function askForKey() {
  if (!dialog.open) dialog.showModal();
  document.getElementById("login-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("login-key");
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    session = await api("/ui/login", { method: "POST", body: { key: input.value } });
  } catch (err) {
    error.textContent = err.message;
    return;
  }
  input.value = "";
  dialog.close();
  showSession();
  show();
}

function showSession() {
  const who = document.getElementById("who");
  who.textContent = session ? `${session.kind}${session.tenant ? ` (${session.tenant})` : ""}${session.platform ? " · platform mode" : ""}` : "";
  document.getElementById("logout").hidden = !session || session.kind === "local";
}

async function logOut() {
  await api("/ui/logout", { method: "POST" });
  session = null;
  showSession();
  current?.stop?.();
  view.replaceChildren();
  askForKey();
}

async function main() {
  setUnauthorizedHandler(askForKey);
  document.getElementById("login-form").addEventListener("submit", signIn);
  document.getElementById("logout").addEventListener("click", logOut);
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  window.addEventListener("hashchange", show);
  session = await api("/ui/session");
  if (session.kind === "none") {
    session = null;
    askForKey();
    return;
  }
  showSession();
  show();
}

main();
