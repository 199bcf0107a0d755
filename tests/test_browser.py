"""The notebooks as a student meets them: JupyterLab in a real headless browser, Run All, no error box.

Starts JupyterLab on 127.0.0.1 (random port, token) in a temporary copy of the project set to the tiny
profile, opens a notebook in Debian's chromium driven by Playwright (never Playwright's own browser
download), runs all cells, waits until the kernel is idle and every cell has run, and fails on any
stderr or error output (warnings included: the red boxes), a widget that cannot render, an open
dialog, or a cell left unexecuted. Needs `make install-browser` (apt chromium + requirements/browser.txt);
skips with the reason where they are missing, except under CI (CI=true), where that is a failure.

Every numbered notebook has a case listing the stages whose outputs it reads, run here through papermill
first (as `dvc repro` would); opened by hand, the notebook shows those outputs without recomputing them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import REPO

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("MUSIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_S = int(os.environ.get("MUSIC_BROWSER_TIMEOUT_S", "600"))  # Run All of one notebook (00: seconds)

# (notebook, stages whose outputs it shows: run first through papermill in the same project copy, once per
# session). Opened by hand (run=False), each notebook then reads its stage's outputs instead of recomputing them.
CASES = [
    pytest.param("00_draw_seeds.ipynb", [], id="00_draw_seeds"),
    pytest.param("01_held_out_items.ipynb", ["seed", "heldout"], id="01_held_out_items"),
    pytest.param("02_simulate_conversations.ipynb", ["seed", "simulate"], id="02_simulate_conversations"),
    pytest.param("03_contrast_pairs.ipynb", ["seed", "simulate", "contrast"], id="03_contrast_pairs"),
    pytest.param("04_train_rm.ipynb", ["seed", "simulate", "contrast", "train@baseline"], id="04_train_rm"),
    pytest.param(
        "05_evaluate_rm.ipynb",
        ["seed", "heldout", "simulate", "contrast", "train@baseline", "evaluate@baseline"],
        id="05_evaluate_rm",
    ),
    pytest.param(
        "06_pick_best_of_n.ipynb",
        ["seed", "simulate", "contrast", "train@baseline", "train@music", "best_of_n"],
        id="06_pick_best_of_n",
    ),
    pytest.param(
        "07_plot_results.ipynb",
        [
            "seed",
            "heldout",
            "simulate",
            "contrast",
            "train@baseline",
            "train@music",
            "train@control",
            "evaluate@baseline",
            "evaluate@music",
            "evaluate@control",
            "best_of_n",
            "plots",
        ],
        id="07_plot_results",
    ),
]


def _missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run calls `make install-browser`)")
    pytest.skip(f"{reason} (install with `make install-browser`)")


@pytest.fixture(scope="session")
def playwright_api():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright's Python package is not installed (requirements/browser.txt)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def lab_project(tmp_path_factory) -> Path:
    """A copy of what the notebooks need, with params.yaml = the tiny profile (outputs inside the copy)."""
    root = tmp_path_factory.mktemp("lab_project")
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(REPO / "tests" / "fixtures", root / "tests" / "fixtures")
    for marker in ("pyproject.toml", "dvc.yaml"):  # music.pipeline.notebooks.repo_root() looks for these
        shutil.copy(REPO / marker, root / marker)
    params = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    params["paths"]["data"] = str(REPO / "data")  # read-only inputs
    params["paths"]["cache"] = str(REPO / ".cache" / "music")  # the converted embedded model, reused
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def lab_server(lab_project, tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token, offline (no news, no update check), all cells in the DOM."""
    state = tmp_path_factory.mktemp("lab_state")
    settings = state / "settings"
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(state / "config"),
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
    )
    log = open(state / "jupyterlab.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={lab_project}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        f"--LabServerApp.user_settings_dir={settings}",
        f"--LabServerApp.workspaces_dir={state / 'workspaces'}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    server = subprocess.Popen(cmd, cwd=lab_project, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"JupyterLab did not start; its log:\n{(state / 'jupyterlab.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"base": base, "token": token, "log": state / "jupyterlab.log"}
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="session")
def browser(playwright_api, tmp_path_factory):
    """Debian's chromium with a fresh profile (Playwright takes --user-data-dir as user_data_dir)."""
    profile = tmp_path_factory.mktemp("chromium_profile")
    context = playwright_api.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1400, "height": 1000},
    )
    yield context
    context.close()


_RUN: set[tuple[str, str]] = set()  # (project, stage) already run through papermill in this session


def _run_upstream(project: Path, stages: list[str], monkeypatch) -> None:
    from music.pipeline.notebooks import run_notebook

    monkeypatch.chdir(project)
    for stage in stages:
        if (str(project), stage) in _RUN:
            continue
        _RUN.add((str(project), stage))
        name, _, variant = stage.partition("@")
        run_notebook(name, "params.yaml", variant=variant or None, output_dir=project / "reports" / "notebooks")


# In the page: the state of the notebook open at `path`, read from JupyterLab's own models (window.jupyterapp).
_STATE_JS = """(path) => {
  const app = window.jupyterapp;
  const panel = app && Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  return {
    id: panel.id,
    current: app.shell.currentWidget === panel,
    kernel: kernel ? kernel.status : 'none',
    code_cells: cells.length,
    executed: cells.filter(c => c.model.executionCount !== null).length,
    running: cells.filter(c => (c.promptNode && c.promptNode.textContent.includes('*'))).length,
    figures_as_text: cells.flatMap((c, i) => c.model.outputs.toJSON()
        .filter(o => o.data && !o.data['image/png']
            && /<Figure size|FacetGrid at 0x/.test([].concat(o.data['text/plain'] || []).join('')))
        .map(o => `cell ${i + 1}: ` + [].concat(o.data['text/plain']).join('').slice(0, 100))),
    images: cells.reduce((n, c) => n + c.model.outputs.toJSON().filter(o => o.data && o.data['image/png']).length, 0),
    problems: cells.flatMap((c, i) => c.model.outputs.toJSON()
        .filter(o => o.output_type === 'error' || (o.output_type === 'stream' && o.name === 'stderr'))
        .map(o => `cell ${i + 1}: ` + (o.output_type === 'error'
              ? `${o.ename}: ${o.evalue}` : [].concat(o.text).join('')).slice(0, 600))),
  };
}"""

_BOX_SELECTORS = {
    "stderr/error output box": '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
    "widget that failed to render": '.jp-OutputArea-output:has-text("Error displaying widget")',
    "dialog": ".jp-Dialog",
    "stale-output banner": ".music-stale-banner",  # music.pipeline.freshness: outputs older than their params/deps
}
# Notebooks whose figure cells must draw (an image, not `<Figure size ...>`): at least this many images each.
MIN_IMAGES = {
    "00_draw_seeds.ipynb": 1,
    "04_train_rm.ipynb": 1,
    "05_evaluate_rm.ipynb": 2,
    "06_pick_best_of_n.ipynb": 0,
    "07_plot_results.ipynb": 6,
}


def _run_all_in_browser(browser, lab_server, notebook: str, shots: Path) -> dict:
    page = browser.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    path = f"notebooks/{notebook}"
    state_js = f"() => ({_STATE_JS})({json.dumps(path)})"
    try:
        # a workspace of its own: only this notebook opens (no tabs restored from an earlier page)
        workspace = f"test-{Path(notebook).stem}-{secrets.token_hex(4)}"
        page.goto(f"{lab_server['base']}/lab/workspaces/{workspace}/tree/{path}?token={lab_server['token']}")
        page.wait_for_function(
            f"() => {{ const s = ({state_js})(); return s && s.kernel === 'idle' && s.code_cells > 0; }}",
            timeout=120_000,
        )
        panel_id = page.evaluate(state_js)["id"]
        page.evaluate(f"() => window.jupyterapp.shell.activateById({json.dumps(panel_id)})")
        page.wait_for_function(f"() => ({state_js})().current", timeout=30_000)  # the commands act on it
        # a notebook saved with outputs starts from none, so "every cell ran" means ran now
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        assert page.evaluate(state_js)["executed"] == 0, "clearing the outputs left execution counts behind"
        # not awaited here (the command's promise settles only when every cell has run): the wait below times it
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        # done: the kernel idle, no cell queued or running, and either every cell ran or one failed
        # (Run All stops at an error); held for two polls so a gap between cells is not taken for the end
        done = f"""() => {{ const s = ({state_js})();
            const now = s && s.kernel === 'idle' && s.running === 0
                && (s.executed === s.code_cells || s.problems.length > 0);
            window.__musicIdle = now ? (window.__musicIdle || 0) + 1 : 0;
            return window.__musicIdle >= 2 || (s && s.kernel === 'dead'); }}"""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            page.wait_for_function(done, timeout=RUN_TIMEOUT_S * 1000, polling=500)
            timed_out = False
        except PlaywrightTimeout:
            timed_out = True  # report where it stood instead of a bare timeout
        state = page.evaluate(state_js)
        state["timed_out"] = timed_out
        scope = f'[id="{panel_id}"] '  # this notebook's boxes (dialogs sit outside it)
        boxes = {
            name: [t[:600] for t in page.locator(("" if name == "dialog" else scope) + sel).all_inner_texts()]
            for name, sel in _BOX_SELECTORS.items()
        }
        state["boxes"] = {k: v for k, v in boxes.items() if v}
        state["progress_widgets"] = page.locator(
            scope + ".jp-OutputArea-output .jupyter-widgets.widget-hprogress"
        ).count()
        state["page_errors"] = page_errors
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{Path(notebook).stem}.png"), full_page=True)
        return state
    finally:
        page.close()


# `browser` first: pytest sets fixtures up in argument order, so a missing browser skips before JupyterLab starts.
@pytest.mark.parametrize("notebook,needs", CASES)
def test_notebook_runs_clean_in_jupyterlab(
    notebook, needs, browser, lab_project, lab_server, monkeypatch, tmp_path_factory
):
    _run_upstream(lab_project, needs, monkeypatch)
    shots = tmp_path_factory.getbasetemp() / "browser_screenshots"
    state = _run_all_in_browser(browser, lab_server, notebook, shots)
    report = json.dumps(
        {
            k: state[k]
            for k in (
                "kernel",
                "code_cells",
                "executed",
                "running",
                "problems",
                "boxes",
                "figures_as_text",
                "images",
                "page_errors",
            )
        },
        indent=1,
    )
    where = f"screenshot: {shots / (Path(notebook).stem + '.png')}; JupyterLab log: {lab_server['log']}"
    assert not state["timed_out"], f"{notebook}: Run All still busy after {RUN_TIMEOUT_S} s\n{report}\n{where}"
    assert state["kernel"] == "idle", f"{notebook}: kernel {state['kernel']}\n{report}\n{where}"
    assert not state["problems"] and not state["boxes"], f"{notebook} shows errors or warnings:\n{report}\n{where}"
    assert state["executed"] == state["code_cells"], f"{notebook}: not every cell ran\n{report}\n{where}"
    assert not state["figures_as_text"], f"{notebook}: a figure printed as text, not drawn\n{report}\n{where}"
    assert state["images"] >= MIN_IMAGES.get(notebook, 0), f"{notebook}: too few figures drawn\n{report}\n{where}"


def _write_notebook(path: Path, *sources: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def test_the_check_sees_warnings_errors_and_renders_progress_bars(browser, lab_project, lab_server, tmp_path_factory):
    """The detector itself: a warning box and a traceback are reported, Run All stops at the error,
    and a tqdm.auto bar renders as a widget (ipywidgets), with no IProgress warning."""
    _write_notebook(
        lab_project / "notebooks" / "_canary.ipynb",
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='canary'):\n    pass",
        "import warnings\nwarnings.warn('a canary warning')",
        "raise ValueError('a canary error')",
        "print('never runs')",
    )
    state = _run_all_in_browser(
        browser, lab_server, "_canary.ipynb", tmp_path_factory.getbasetemp() / "browser_screenshots"
    )
    assert not state["timed_out"], state
    problems = "\n".join(state["problems"])
    assert "UserWarning: a canary warning" in problems and "ValueError: a canary error" in problems
    assert "IProgress not found" not in problems  # ipywidgets is installed: the bar is a widget
    assert len(state["boxes"]["stderr/error output box"]) == 2
    assert state["executed"] == 3 and state["code_cells"] == 4
    assert state["progress_widgets"] == 1, "the tqdm bar did not render as a widget"
