// nbcontainer-kernel's JupyterLab extension: a "Runs" sidebar (live status, sweeps'
// children, open a run's page or its executed notebook, Cancel), and two commands in the
// palette, the notebook toolbar and its context menu: "Containerize this notebook" and
// "Run this notebook on...". Everything goes through the server's /nbcontainer/api/.
// What a run wrote is put into the page as text only (textContent), never as markup.

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  IFrame,
  MainAreaWidget,
  Notification,
  ToolbarButton,
  showDialog
} from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { listIcon, runIcon, buildIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
const POLL_MS = 2000;

namespace CommandIDs {
  export const containerize = 'nbcontainer:containerize';
  export const runNotebook = 'nbcontainer:run-notebook';
  export const openRuns = 'nbcontainer:open-runs-page';
}

interface IRun {
  id: string;
  status: string;
  backend: string;
  kind: string;
  params: Record<string, unknown>;
  recorded: Record<string, unknown>;
  metrics: Record<string, unknown>;
  children: Record<string, number> | null;
  failure: string | null;
}

interface IBuild {
  id: string;
  notebook: string;
  tag: string;
  status: string;
  lines: string[];
  parameters: { name: string; default: unknown }[];
  error: string | null;
}

interface IParameter {
  name: string;
  type: string;
  default: unknown;
}

/** A call to the server's runs API; the server's own token and XSRF handling. */
async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nbcontainer', 'api', path);
  const res = await ServerConnection.makeRequest(url, init, settings);
  const doc = await res.json().catch(() => ({}));
  if (!res.ok) {
    throw new Error(`${doc.error ?? res.status}: ${doc.reason ?? res.statusText}`);
  }
  return doc as T;
}

function el(tag: string, text?: string, cls?: string): HTMLElement {
  const node = document.createElement(tag);
  if (text !== undefined) {
    node.textContent = text;
  }
  if (cls) {
    node.className = cls;
  }
  return node;
}

function pairs(obj: Record<string, unknown> | null | undefined): string {
  return Object.entries(obj ?? {})
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
}

/** A page of the server's (the runs page, an executed notebook) in a Lab tab. */
function openPage(
  app: JupyterFrontEnd,
  path: string,
  label: string,
  scripts: boolean
): void {
  const settings = ServerConnection.makeSettings();
  // The executed notebook gets a frame with no permission at all (the server also
  // serves it with a sandboxing policy); the runs page runs its own script.
  const frame = new IFrame({
    sandbox: scripts ? ['allow-scripts', 'allow-same-origin'] : []
  });
  frame.url = URLExt.join(settings.baseUrl, path);
  const widget = new MainAreaWidget({ content: frame });
  widget.id = `nbc-${label.replace(/[^A-Za-z0-9_-]/g, '-')}-${Date.now()}`;
  widget.title.label = label;
  widget.title.closable = true;
  app.shell.add(widget, 'main');
  app.shell.activateById(widget.id);
}

/** The Runs sidebar: newest runs first, a sweep's children under it, live while shown. */
class RunsSidebar extends Widget {
  constructor(private app: JupyterFrontEnd) {
    super();
    this.id = 'nbcontainer-runs';
    this.addClass('nbc-Runs');
    this.title.icon = listIcon;
    this.title.caption = 'nbcontainer runs';
    const header = el('header', 'Runs');
    const all = el('a', 'runs page') as HTMLAnchorElement;
    all.href = '#';
    all.addEventListener('click', e => {
      e.preventDefault();
      openPage(this.app, 'nbcontainer/runs', 'Runs', true);
    });
    header.appendChild(all);
    this.node.appendChild(header);
    this.node.appendChild(this.buildList);
    this.node.appendChild(this.runList);
    this.tick();
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    super.dispose();
  }

  /** A build started here, followed until it ends. */
  follow(build: IBuild): void {
    this.builds.set(build.id, build);
    this.renderBuilds();
  }

  async refresh(): Promise<void> {
    const doc = await api<{ runs: IRun[] }>('runs?parent=none&limit=50');
    this.runs = doc.runs;
    for (const id of this.open) {
      const kids = await api<{ runs: IRun[] }>(
        `runs?${new URLSearchParams({ parent: id, limit: '500' })}`
      );
      this.kids.set(id, kids.runs.slice().reverse());
    }
    for (const [id, b] of this.builds) {
      if (b.status === 'building') {
        this.builds.set(id, await api<IBuild>(`images/${id}`));
      }
    }
    this.render();
  }

  private tick(): void {
    this.refresh()
      .catch(err => console.warn('nbcontainer: runs not read:', err))
      .finally(() => {
        this.timer = window.setTimeout(() => this.tick(), this.isVisible ? POLL_MS : 10000);
      });
  }

  private render(): void {
    this.renderBuilds();
    this.runList.replaceChildren();
    if (!this.runs.length) {
      this.runList.appendChild(el('li', 'No runs recorded yet.', 'nbc-Empty'));
    }
    for (const run of this.runs) {
      this.runList.appendChild(this.row(run, false));
      if (this.open.has(run.id)) {
        for (const child of this.kids.get(run.id) ?? []) {
          this.runList.appendChild(this.row(child, true));
        }
      }
    }
  }

  private renderBuilds(): void {
    this.buildList.replaceChildren();
    for (const b of this.builds.values()) {
      const li = el('li', undefined, 'nbc-Build');
      li.dataset.build = b.id;
      li.dataset.status = b.status;
      li.appendChild(el('span', `${b.tag}: ${b.status}`, 'nbc-name'));
      const last = b.error ?? b.lines[b.lines.length - 1] ?? '';
      li.appendChild(el('div', last, 'nbc-detail'));
      if (b.status === 'succeeded') {
        // What `Run this notebook on…` and `nbcontainer run IMAGE -p` take.
        const names = b.parameters.map(p => `${p.name}=${JSON.stringify(p.default)}`);
        li.appendChild(el('div', `parameters: ${names.join(' ') || 'none'}`, 'nbc-detail'));
      }
      this.buildList.appendChild(li);
      if (b.status !== 'building' && !this.told.has(b.id)) {
        this.told.add(b.id);
        if (b.status === 'succeeded') {
          Notification.success(`Built ${b.tag}`, { autoClose: 5000 });
        } else {
          Notification.error(`Building ${b.tag} failed: ${b.error}`);
        }
      }
    }
  }

  private row(run: IRun, child: boolean): HTMLElement {
    const li = el('li', undefined, child ? 'nbc-Run nbc-child' : 'nbc-Run');
    li.dataset.run = run.id;
    li.dataset.status = run.status;
    if (run.children && !child) {
      const toggle = el('button', this.open.has(run.id) ? '▾' : '▸', 'nbc-Toggle');
      toggle.title = 'children';
      toggle.addEventListener('click', () => {
        if (this.open.has(run.id)) {
          this.open.delete(run.id);
        } else {
          this.open.add(run.id);
        }
        void this.refresh();
      });
      li.appendChild(toggle);
    }
    const name = el('span', run.id, 'nbc-name');
    name.title = 'open the run';
    name.addEventListener('click', () =>
      openPage(this.app, `nbcontainer/runs/${encodeURIComponent(run.id)}`, run.id, true)
    );
    li.appendChild(name);
    li.appendChild(el('span', run.status, `nbc-Status ${run.status}`));
    if (run.kind === 'notebook' && !run.children && TERMINAL.has(run.status)) {
      const nb = el('button', 'notebook', 'nbc-OpenNotebook');
      nb.title = 'open the executed notebook';
      nb.addEventListener('click', () =>
        openPage(
          this.app,
          `nbcontainer/api/runs/${encodeURIComponent(run.id)}/notebook`,
          `${run.id} (executed)`,
          false
        )
      );
      li.appendChild(nb);
    }
    if (!TERMINAL.has(run.status)) {
      const cancel = el('button', 'Cancel', 'nbc-Cancel') as HTMLButtonElement;
      cancel.addEventListener('click', async () => {
        cancel.disabled = true;
        try {
          await api(`runs/${encodeURIComponent(run.id)}/cancel`, { method: 'POST' });
        } catch (err) {
          Notification.error(String(err));
        }
        await this.refresh();
      });
      li.appendChild(cancel);
    }
    const counts = run.children
      ? Object.entries(run.children)
          .map(([s, n]) => `${n} ${s.toLowerCase()}`)
          .join(', ')
      : '';
    const detail = [counts, pairs(run.params), pairs(run.recorded)].filter(Boolean).join(' → ');
    li.appendChild(el('div', detail || run.backend, 'nbc-detail'));
    return li;
  }

  private runs: IRun[] = [];
  private open = new Set<string>();
  private kids = new Map<string, IRun[]>();
  private builds = new Map<string, IBuild>();
  private told = new Set<string>();
  private timer = 0;
  private buildList = el('ul');
  private runList = el('ul');
}

/** A form of labelled inputs in a dialog; its value is each input's text by name. */
class Form extends Widget {
  constructor(fields: { name: string; label: string; value?: string; options?: string[] }[]) {
    super();
    this.addClass('nbc-Form');
    for (const f of fields) {
      const label = el('label', f.label) as HTMLLabelElement;
      label.htmlFor = `nbc-field-${f.name}`;
      let input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
      if (f.options) {
        input = document.createElement('select');
        for (const o of f.options) {
          input.appendChild(el('option', o));
        }
      } else if (f.name === 'sweep') {
        input = document.createElement('textarea');
        input.placeholder = 'name=v1,v2 (a line per axis)';
      } else {
        input = document.createElement('input');
      }
      input.id = `nbc-field-${f.name}`;
      input.name = f.name;
      input.value = f.value ?? '';
      this.node.appendChild(label);
      this.node.appendChild(input);
    }
  }

  getValue(): Record<string, string> {
    const out: Record<string, string> = {};
    this.node.querySelectorAll('input, select, textarea').forEach(node => {
      const input = node as HTMLInputElement;
      out[input.name] = input.value;
    });
    return out;
  }
}

/** A value as typed: JSON where it parses (0.5, true, [1, 2]), else the text itself. */
function parseValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function show(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : JSON.stringify(value) ?? '';
}

async function saved(panel: NotebookPanel): Promise<string> {
  if (panel.context.model.dirty) {
    await panel.context.save();
  }
  return panel.context.path;
}

async function containerize(panel: NotebookPanel, sidebar: RunsSidebar): Promise<void> {
  const path = await saved(panel);
  const stem = path.split('/').pop()!.replace(/\.ipynb$/, '');
  const tag = `${stem.toLowerCase().replace(/[^a-z0-9._-]+/g, '-')}:latest`;
  const form = new Form([
    { name: 'tag', label: 'Image tag', value: tag },
    { name: 'base', label: 'Base image (empty: NBCONTAINER_BASE_IMAGE or python:X.Y-slim)', value: '' },
    { name: 'requirements', label: 'Requirements file (empty: this environment)', value: '' }
  ]);
  const answer = await showDialog({
    title: `Containerize ${path}`,
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Build' })]
  });
  if (!answer.button.accept || !answer.value) {
    return;
  }
  const v = answer.value as Record<string, string>;
  const build = await api<IBuild>('images', {
    method: 'POST',
    body: JSON.stringify({
      notebook: path,
      tag: v.tag,
      base: v.base || null,
      requirements: v.requirements || null
    })
  });
  sidebar.follow(build);
}

async function runNotebook(panel: NotebookPanel, sidebar: RunsSidebar): Promise<void> {
  const path = await saved(panel);
  const [{ backends }, { parameters }] = await Promise.all([
    api<{ backends: string[] }>('backends'),
    api<{ parameters: IParameter[] }>(`parameters?${new URLSearchParams({ path })}`)
  ]);
  const fields = [
    { name: 'backend', label: 'Backend', options: backends },
    ...parameters.map(p => ({
      name: `param:${p.name}`,
      label: `${p.name} (${p.type})`,
      value: show(p.default)
    })),
    { name: 'sweep', label: 'Sweep', value: '' }
  ];
  const answer = await showDialog({
    title: `Run ${path} on…`,
    body: new Form(fields),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run' })]
  });
  if (!answer.button.accept || !answer.value) {
    return;
  }
  const v = answer.value as Record<string, string>;
  const params: Record<string, unknown> = {};
  for (const p of parameters) {
    const text = v[`param:${p.name}`];
    if (text !== show(p.default)) {
      params[p.name] = parseValue(text);
    }
  }
  const sweep: Record<string, unknown[]> = {};
  for (const line of (v.sweep ?? '').split('\n')) {
    const [name, values] = line.split('=', 2);
    if (name && name.trim() && values) {
      sweep[name.trim()] = values.split(',').map(x => parseValue(x.trim()));
    }
  }
  const run = await api<{ id: string; status: string }>('runs', {
    method: 'POST',
    body: JSON.stringify({ notebook: path, backend: v.backend, params, sweep })
  });
  Notification.info(`${run.id} submitted (${v.backend})`, { autoClose: 4000 });
  await sidebar.refresh();
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbcontainer-kernel:plugin',
  description: 'Runs sidebar, Containerize this notebook, Run this notebook on…',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const sidebar = new RunsSidebar(app);
    app.shell.add(sidebar, 'left', { rank: 600 });
    restorer?.add(sidebar, sidebar.id);

    const current = (): NotebookPanel | null => tracker.currentWidget;
    const failed = (what: string) => (err: unknown) =>
      Notification.error(`${what}: ${err instanceof Error ? err.message : err}`);
    app.commands.addCommand(CommandIDs.containerize, {
      label: 'Containerize this notebook',
      caption: 'Build an image that runs this notebook with parameters',
      icon: buildIcon,
      isEnabled: () => current() !== null,
      execute: () => {
        const panel = current();
        return panel && containerize(panel, sidebar).catch(failed('Containerize'));
      }
    });
    app.commands.addCommand(CommandIDs.runNotebook, {
      label: 'Run this notebook on…',
      caption: 'Run this notebook with parameters on a backend',
      icon: runIcon,
      isEnabled: () => current() !== null,
      execute: () => {
        const panel = current();
        return panel && runNotebook(panel, sidebar).catch(failed('Run'));
      }
    });
    app.commands.addCommand(CommandIDs.openRuns, {
      label: 'Open the runs page',
      execute: () => openPage(app, 'nbcontainer/runs', 'Runs', true)
    });
    for (const command of Object.values(CommandIDs)) {
      palette?.addItem({ command, category: 'nbcontainer' });
    }
    app.contextMenu.addItem({ command: CommandIDs.containerize, selector: '.jp-Notebook', rank: 60 });
    app.contextMenu.addItem({ command: CommandIDs.runNotebook, selector: '.jp-Notebook', rank: 61 });
    // The notebook's toolbar: the same two actions, after the cell type picker.
    const buttons = [
      { name: 'nbcontainer-containerize', icon: buildIcon, tooltip: 'Containerize this notebook', act: containerize, what: 'Containerize' },
      { name: 'nbcontainer-run', icon: runIcon, tooltip: 'Run this notebook on…', act: runNotebook, what: 'Run' }
    ];
    tracker.widgetAdded.connect((_, panel) => {
      let after = 'cellType';
      for (const { name, icon, tooltip, act, what } of buttons) {
        const onClick = () => void act(panel, sidebar).catch(failed(what));
        panel.toolbar.insertAfter(after, name, new ToolbarButton({ icon, tooltip, onClick }));
        after = name;
      }
    });
  }
};

export default plugin;
