"""Run the numbered notebooks as pipeline stages, and give each notebook its typed parameters.

A stage notebook's cell tagged "parameters" holds `params_file = "params.yaml"`, `params = None` and
`run = False`; `python -m music.pipeline.notebooks STAGE` executes it with papermill from the repository root,
injecting the whole params file as the `params` dict, `run = True` (recompute the stage's outputs) and
`variant` for per-variant stages. Opened by hand in JupyterLab, the same notebook reads params.yaml
itself and shows the outputs that already exist, recomputing only what is missing (or everything, with
`run = True`): its expensive cells are marked.

On the console a stage is one line, redrawn in place on a terminal while it runs
(`contrast ............. cell 5/14 · 1:07`) and ending as `contrast ............. done in 1 min 32 s`.
Everything else goes to a log beside the executed notebook (reports/notebooks/NAME.log): papermill's
cell log, every cell's printed output, and the kernel process's own output. On failure the console
gets the log's tail and both paths.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator

import yaml

from music.config import Params, field_help, from_dict, load_params, read_params_file

# stage name -> notebook file (one place)
NOTEBOOKS = {
    "seed": "00_draw_seeds.ipynb",
    "heldout": "01_held_out_items.ipynb",  # the test items, built apart from the method (music.stages.heldout)
    "simulate": "02_simulate_conversations.ipynb",
    "contrast": "03_contrast_pairs.ipynb",
    "train": "04_train_rm.ipynb",
    "evaluate": "05_evaluate_rm.ipynb",
    "best_of_n": "06_pick_best_of_n.ipynb",
    "plots": "07_plot_results.ipynb",
}
EXECUTED_DIR = "reports/notebooks"  # executed copies and their logs (change every run; nothing depends on them)
LABEL_WIDTH = 22  # stage labels are padded with dots to this width, so the statuses line up
TAIL_LINES = 40  # log lines shown on the console when a stage fails
PROGRESS_ENV = (
    "MUSIC_PROGRESS"  # "live": redraw the stage line even when stdout is not a terminal (music.pipeline.repro)
)


def repo_root(start: Path | None = None) -> Path:
    """The folder holding dvc.yaml (or params.yaml), searched upwards from `start` or the cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / "pyproject.toml").exists():
            return folder
    return here


PROFILE: dict = {}  # the raw params mapping the notebook loaded (what the profile sets): show_params reads it


def show_package_logs() -> None:
    """The package's log messages (logging.getLogger("music....")) as plain lines in the notebook's output, like
    the rest of a cell's text; other libraries' logs keep their own settings. Idempotent."""
    logger = logging.getLogger("music")
    if not any(getattr(h, "_music_notebook", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._music_notebook = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def load_stage_params(params: dict | None, params_file: str = "params.yaml") -> Params:
    """In a notebook: typed params from the injected dict, else from params_file; cwd -> repo root; the package's
    log messages shown in the cells' output."""
    root = repo_root()
    os.chdir(root)
    show_package_logs()
    PROFILE.clear()
    if params is not None:
        PROFILE.update(params)
        return from_dict(Params, params, f"{params_file} (injected)")
    PROFILE.update(read_params_file(root / params_file) if (root / params_file).exists() else {})
    return load_params(root / params_file)


def outputs_exist(*paths: str | Path) -> bool:
    """True when every path exists: a notebook opened by hand (run=False) then shows them instead of
    recomputing; the DVC stage always recomputes (music.pipeline.notebooks.run_notebook injects run=True)."""
    return all(Path(p).exists() for p in paths)


# ---------------------------------------------------------------- showing a config in a notebook
class _ParamsDumper(yaml.SafeDumper):
    """YAML for display: multi-line strings as literal blocks, tuples and paths as plain values."""


def _str_presenter(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _seq_presenter(dumper: yaml.SafeDumper, value):
    """Short lists of scalars on one line (`variants: [baseline, music]`), others one item a line."""
    flat = all(isinstance(v, (str, int, float, bool)) or v is None for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(value), flow_style=flat and len(str(value)) <= 60)


_ParamsDumper.add_representer(str, _str_presenter)
_ParamsDumper.add_representer(list, _seq_presenter)
_ParamsDumper.add_representer(tuple, _seq_presenter)
_ParamsDumper.add_multi_representer(Path, lambda d, v: d.represent_str(str(v)))
_ParamsDumper.add_multi_representer(object, lambda d, v: d.represent_str(repr(v)))  # anything else: its repr


def format_params(config: Any, name: str | None = None, width: int = 88) -> str:
    """A config dataclass (or dict) as YAML, the same shape as its params.yaml section.

    Mappings one key a line; long strings fold at word boundaries once past `width` columns (PyYAML
    breaks at the first space after it); multi-line strings (prompts) become literal blocks; short
    lists stay on one line. The text parses back to the same values.
    """
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    if name:
        data = {name: data}
    text = yaml.dump(
        data, Dumper=_ParamsDumper, sort_keys=False, default_flow_style=False, width=width, allow_unicode=True, indent=2
    )
    return text.rstrip("\n")


HELP_INDENT = 4  # show_params: a key's help goes under it as YAML comments, this many columns deeper than the key
_BLOCK_SCALAR = ("|", "|-", "|+", ">", ">-", ">+")  # a value line ending so opens a block: its help goes above it


def _help_lines(text: str, indent: int, width: int) -> list[str]:
    """`text` as YAML comment lines (`# ...`) starting at column `indent`, wrapped within `width` columns."""
    import textwrap

    pad = " " * indent + "# "
    return textwrap.wrap(
        text,
        max(width, len(pad) + 30),
        initial_indent=pad,
        subsequent_indent=pad,
        break_long_words=False,
        break_on_hyphens=False,
    )


_UNSET = object()


def _set_lines(
    config: Any, raw: dict, indent: int, width: int, explained: set | None = None, default: Any = _UNSET
) -> tuple[list[str], list[str]]:
    """YAML lines of the fields `raw` sets (a value equal to `default`'s marked `# default`), and the fields it
    leaves unset. `default`: the config's default instance (a chat role's: its parent's default role), by
    default `type(config)()`; None: no marks.

    With `explained` (a set), each printed key is followed by its help (music.config.field_help) as comment
    lines; `explained` collects the (class, field) pairs already explained, so a second chat role's keys are
    not explained again. None: no help.
    """
    if default is _UNSET:
        try:
            default = type(config)()
        except TypeError:  # a config with required fields: nothing to mark
            default = None
    lines: list[str] = []
    unset: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name not in raw:
            unset.append(f.name)
            continue
        text = ""
        if explained is not None and (type(config), f.name) not in explained:
            explained.add((type(config), f.name))
            text = field_help(config, f.name)
        notes = _help_lines(text, indent + HELP_INDENT, width) if text else []
        if dataclasses.is_dataclass(value) and isinstance(raw[f.name], dict):
            sub_default = getattr(default, f.name, None) if default is not None else None
            sub, sub_unset = _set_lines(value, raw[f.name], indent + 2, width, explained, sub_default)
            lines += [" " * indent + f"{f.name}:", *notes, *sub]
            unset += [f"{f.name}.{u}" for u in sub_unset]
        else:
            first, *rest = format_params({f.name: value}, width=width).splitlines()
            mark = "  # default" if default is not None and getattr(default, f.name, object()) == value else ""
            value_lines = [" " * indent + first + mark, *(" " * indent + r for r in rest)]
            if first.endswith(_BLOCK_SCALAR):  # comment lines under it would be read as the block's text
                lines += [*_help_lines(text, indent, width), *value_lines] if text else value_lines
            else:
                lines += [*value_lines, *notes]
    return lines, unset


def show_params(
    config: Any, name: str | None = None, width: int = 88, profile: dict | None = None, with_help: bool = True
) -> None:
    """Print what the profile sets for a stage, e.g. `show_params(params.contrast, "contrast")`: the keys of its
    params file's section (`# default` where the value equals music/config.py's default), each followed by its
    help as indented YAML comments (with_help; a chat role's keys are explained once), then one line naming the
    fields it leaves at their defaults. Without a loaded profile (load_stage_params) every field is printed.
    The text parses as YAML to the printed values."""
    import textwrap

    raw = profile if profile is not None else (PROFILE.get(name) if name else None)
    if not dataclasses.is_dataclass(config):
        print(format_params(config, name, width))
        return
    explained: set | None = set() if with_help else None
    if not isinstance(raw, dict):  # no profile: every field, no default marks (nothing to tell them from)
        lines, _ = _set_lines(config, dataclasses.asdict(config), 2 if name else 0, width, explained, None)
        print("\n".join(([f"{name}:"] if name else []) + lines))
        return
    lines, unset = _set_lines(config, raw, 2 if name else 0, width, explained)
    print("\n".join(([f"{name}:"] if name else []) + lines))
    groups: dict[str, list[str]] = {}  # "user" -> ["dtype", ...]; "" for the section's own fields
    for u in unset:
        prefix, _, leaf = u.rpartition(".")
        groups.setdefault(prefix, []).append(leaf)
    by_fields: dict[tuple, list[str]] = {}  # roles leaving the same fields unset are named together
    for prefix, leaves in groups.items():
        by_fields.setdefault(tuple(leaves), []).append(prefix)
    parts = [
        (f"{' & '.join(p for p in prefixes)}: " if any(prefixes) else "") + ", ".join(leaves)
        for leaves, prefixes in by_fields.items()
    ]
    if parts:
        listing = "python -m music.config" + (f" {name}" if name else "")
        print(
            textwrap.fill(
                f"# not set by the profile, so at their defaults (`{listing}` explains each): " + "; ".join(parts),
                width,
                subsequent_indent="#   ",
            )
        )


def say(text: str) -> None:
    """A lesson's sentence built from the run's params or outputs (so its numbers never drift from the run):
    Markdown in a notebook, plain text elsewhere.
    E.g. `say(f"This run simulates **{params.simulate.turns} turns**.")`."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(text))
    else:
        print(text)


# ---------------------------------------------------------------- one console line per stage
def stage_label(stage: str, variant: str | None = None) -> str:
    """The stage's name as DVC addresses it: `train@music`."""
    return f"{stage}@{variant}" if variant else stage


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def stage_line(label: str, status: str) -> str:
    """`seed ................. done in 3 s`: the label, dots to LABEL_WIDTH, the status."""
    return f"{label} {'.' * max(3, LABEL_WIDTH - len(label))} {status}"


class StageProgress:
    """The console line of one running stage, fed by nbclient's cell hooks.

    live: redraw `label ... cell i/n · m:ss` in place every second (on a terminal, or when
    MUSIC_PROGRESS=live); otherwise print nothing until `finish`. `finish` prints the final line.
    """

    def __init__(self, label: str, stream: IO[str] | None = None, live: bool | None = None, interval: float = 1.0):
        self.label = label
        self.stream = stream or sys.stdout
        if live is None:
            live = os.environ.get(PROGRESS_ENV) == "live" or bool(getattr(self.stream, "isatty", lambda: False)())
        self.live = live
        self.interval = interval
        self.total = 0  # code cells in the executed notebook (known at on_notebook_start)
        self.current = 0  # the code cell now running, 1-based
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def status(self) -> str:
        m, s = divmod(int(self.elapsed), 60)
        cells = f"cell {self.current}/{self.total}" if self.total else "starting kernel"
        return f"{cells} · {m}:{s:02d}"

    def _draw(self, text: str, end: str = "") -> None:
        with self._lock:
            self.stream.write("\r" + text + "\x1b[K" + end)
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw(stage_line(self.label, self.status()))

    def start(self) -> None:
        self.started = time.monotonic()
        if self.live:
            self._draw(stage_line(self.label, self.status()))
            self._thread = threading.Thread(target=self._tick, name="stage-progress", daemon=True)
            self._thread.start()

    # nbclient hooks (keyword arguments), passed through papermill
    def on_notebook_start(self, notebook, **_) -> None:
        self.total = sum(1 for c in notebook.cells if c.cell_type == "code" and c.source.strip())

    def on_cell_execute(self, cell, cell_index, **_) -> None:
        self.current += 1
        if self.live:
            self._draw(stage_line(self.label, self.status()))

    def hooks(self) -> dict:
        return {"on_notebook_start": self.on_notebook_start, "on_cell_execute": self.on_cell_execute}

    def finish(self, ok: bool) -> str:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        took = format_duration(self.elapsed)
        status = f"done in {took}" if ok else f"FAILED at cell {self.current}/{self.total} after {took}"
        line = stage_line(self.label, status)
        if self.live:
            self._draw(line, end="\n")
        else:
            self.stream.write(line + "\n")
            self.stream.flush()
        return line


# ---------------------------------------------------------------- running a notebook quietly
class StageError(RuntimeError):
    """A stage notebook failed; the message ends with the log's tail."""

    def __init__(self, message: str, notebook: Path, log: Path):
        super().__init__(message)
        self.notebook, self.log = notebook, log


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_tail(path: Path, n: int = TAIL_LINES) -> str:
    lines = _ANSI.sub("", Path(path).read_text(encoding="utf-8", errors="replace")).splitlines()
    return "\n".join(lines[-n:])


def _kernel_manager_class(log_file: IO[str]):
    """A kernel manager whose kernel process writes to `log_file` instead of the console, and that
    talks to it over IPC sockets on POSIX (no open TCP port, no "running over TCP without
    encryption" warning)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class StageKernelManager(AsyncKernelManager):
        if os.name == "posix":
            transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw.setdefault("stdout", log_file)
            kw.setdefault("stderr", log_file)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return StageKernelManager


@contextlib.contextmanager
def _logging_to(log_file: IO[str]) -> Iterator[None]:
    """papermill's log (and Python warnings raised while executing) into log_file only."""
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    saved = []
    for name in ("papermill", "py.warnings", "traitlets"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def execute_notebook(
    source: Path,
    target: Path,
    parameters: dict[str, Any],
    cwd: Path,
    *,
    log_output: bool = True,
    progress: StageProgress | None = None,
) -> Path:
    """Execute `source` into `target` with papermill; the log goes to target.with_suffix('.log').

    Raises StageError (message: what failed, the paths, the log's tail) when a cell fails.
    """
    import papermill as pm

    target.parent.mkdir(parents=True, exist_ok=True)  # papermill does not create it
    log_path = target.with_suffix(".log")
    hooks = progress.hooks() if progress else {}
    if progress:
        progress.start()
    ok = False
    try:
        with open(log_path, "w", encoding="utf-8", buffering=1) as log_file, _logging_to(log_file):
            try:
                pm.execute_notebook(
                    str(source),
                    str(target),
                    parameters=parameters,
                    cwd=str(cwd),
                    log_output=log_output,
                    progress_bar=False,
                    kernel_name="python3",
                    kernel_manager_class=_kernel_manager_class(log_file),
                    **hooks,
                )
                ok = True
            except Exception as exc:  # a failing cell (PapermillExecutionError) or a kernel that died
                log_file.write(_ANSI.sub("", f"\n{type(exc).__name__}: {exc}\n"))
                failure = exc
    finally:
        if progress:
            progress.finish(ok)
    if not ok:
        raise StageError(
            f"{source.name} failed; executed notebook: {target}\nlog: {log_path}\n"
            f"--- last lines of the log ---\n{log_tail(log_path)}",
            target,
            log_path,
        ) from failure
    return target


def run_notebook(
    stage: str,
    params_file: str = "params.yaml",
    variant: str | None = None,
    output_dir: str | Path = EXECUTED_DIR,
    log_output: bool = True,
    progress: StageProgress | None = None,
) -> Path:
    """Execute a stage's notebook with papermill; returns the executed copy's path (its log beside it)."""
    if stage not in NOTEBOOKS:
        raise SystemExit(f"unknown stage {stage!r}; known: {', '.join(NOTEBOOKS)}")
    root = repo_root()
    params_path = Path(params_file)
    raw = read_params_file(params_path)  # floats as DVC writes them (2e-06) read as floats
    from_dict(Params, raw, str(params_path))  # fail fast on typos, before a kernel starts
    # run=True: the stage recomputes its outputs; opened by hand (run=False) a notebook reads those that exist
    parameters: dict[str, Any] = {"params": raw, "params_file": str(params_path), "run": True}
    if variant is not None:
        parameters["variant"] = variant
    source = root / "notebooks" / NOTEBOOKS[stage]
    suffix = f"_{variant}" if variant else ""
    target = Path(output_dir) / f"{source.stem}{suffix}.ipynb"
    return execute_notebook(source, target, parameters, root, log_output=log_output, progress=progress)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m music.pipeline.notebooks", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(NOTEBOOKS))
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--variant", default=None, help="RM variant, for per-variant stages")
    ap.add_argument("--output-dir", default=EXECUTED_DIR, help="executed notebook and its .log go here")
    args = ap.parse_args(argv)
    progress = StageProgress(stage_label(args.stage, args.variant))
    started = time.monotonic()
    try:
        run_notebook(args.stage, args.params, args.variant, args.output_dir, progress=progress)
    except StageError as exc:
        print(exc, file=sys.stderr)
        return 1
    # the wall time and the units processed, for `python -m music.pipeline.plan --compare` (never fails the stage)
    from music.pipeline.timings import record

    record(args.stage, args.variant, time.monotonic() - started, args.params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
