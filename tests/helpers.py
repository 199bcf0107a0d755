"""Plain constants and helpers shared by the test modules (the repository root, fakes and tiny data), imported as
`from helpers import ...` (pytest puts tests/ on sys.path); pytest fixtures live in conftest.py."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from music.chat import ChatReply
from music.chat.base import ChatBackend
from music.config import ChatModelConfig, Params, TrainConfig
from music.files import write_jsonl
from music.prompts import load_prompt
from music.schema import PreferencePair
from music.stages.seed import Seed

REPO = Path(__file__).resolve().parents[1]  # the repository root
SHARED_DATA = REPO.parent / "shared" / "data"  # real data beside the repository (the shared_data fixture)

USER_PROMPT = load_prompt("user_simulator").text
CONTRAST_PROMPT = load_prompt("contrast_instruct").text


class Crash(RuntimeError):
    pass


def fake_text(messages: list[dict], seed: int) -> str:
    """Deterministic text that depends on the whole conversation, shaped like the role asked for."""
    h = hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()[:8]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if system == USER_PROMPT:
        return f"Could you tell me more about {h}?"
    if CONTRAST_PROMPT in system:
        return f"MODIFIED REQUEST: What about {h} instead?\nANSWER: The answer about {h}."
    topic = messages[-1]["content"].rstrip("?.!").split()[-1]  # answers what was asked (relevance checks see it)
    return f"Answer {h} on {topic}."


class FakeChat(ChatBackend):
    """A ChatBackend (so the real driver and cache run) whose 'model' is fake_text; one unit per request.

    `script(messages, seed)` may return a ChatReply to override; `crash_after` units raises Crash.
    Counts every generated request by its conversation, so tests can prove nothing ran twice.
    """

    kind = "fake"

    def __init__(
        self, name: str = "fake:model", cache=None, script=None, crash_after: int | None = None, batch_size: int = 4
    ):
        super().__init__(
            ChatModelConfig(model=name, batch_size=batch_size), cache
        )  # the driver reads sampling + batch_size
        self.name = name
        self.script = script
        self.crash_after = crash_after
        self.calls = 0  # generate() calls
        self.generated: Counter[str] = Counter()  # conversation digest -> times generated

    def identity(self) -> dict:
        return {"kind": self.kind, "model": self.cfg.model}

    def generate(self, conversations, **kw):
        self.calls += 1
        return super().generate(conversations, **kw)

    def run(self, units, params):
        for unit in units:
            if self.crash_after is not None and self.units_generated >= self.crash_after:
                raise Crash(f"injected crash after {self.crash_after} units")
            out = []
            for r in unit.requests:
                self.generated[hashlib.sha256(json.dumps(r.messages).encode()).hexdigest()] += 1
                scripted = self.script(r.messages, unit.seed) if self.script else None
                out.append(scripted or ChatReply(fake_text(r.messages, unit.seed), "stop"))
            yield unit, out


def make_seeds(n: int = 3, split: str = "train") -> list[Seed]:
    out = []
    for i in range(n):
        ctx = [
            {"role": "user", "content": f"Question {i} about cooking ({split})?"},
            {"role": "assistant", "content": f"Reply {i} about cooking."},
        ]
        if i % 2:
            ctx = [
                {"role": "system", "content": "Be nice."},
                *ctx,
                {"role": "user", "content": f"Follow-up {i}?"},
                {"role": "assistant", "content": f"Second reply {i}."},
            ]
        out.append(
            Seed(
                f"{split}-s{i}",
                f"conv{i}" if split == "train" else f"{split}-conv{i}",  # one conversation, one split
                "fake",
                split,
                ctx,
                f"Real next user {i}?",
                f"Real next reply {i}.",
            )
        )
    return out


def write_seed_files(root: Path, n_train: int = 3, n_eval: int = 2) -> Params:
    P = Params()
    # the stage tests' fakes pin the generated turn 1, a random divergence, method resample and no similarity window
    # (the older defaults); the real next user message, divergence `real`, retrieve and the window have tests of
    # their own
    P.simulate.real_next_user, P.contrast.divergence, P.contrast.request_similarity = False, "random", None
    P.contrast.method = "resample"
    P.paths.seeds = str(root / "seeds")
    P.paths.conversations = str(root / "conversations")
    P.paths.pairs = str(root / "pairs")
    P.paths.heldout = str(root / "heldout")
    P.paths.cache = str(root / "cache")
    write_jsonl(Path(P.paths.seeds) / "train.jsonl", [s.to_record() for s in make_seeds(n_train, "train")])
    evals = make_seeds(n_eval, "eval")
    write_jsonl(Path(P.paths.seeds) / "eval.jsonl", [s.to_record() for s in evals])
    write_jsonl(
        Path(P.paths.seeds) / "eval_conversations.jsonl",  # as the seed stage writes them
        [
            {
                "conversation_id": f"whole-{s.conversation_id}",
                "source": s.source,
                "messages": [
                    *s.context,
                    {"role": "user", "content": s.next_user},
                    {"role": "assistant", "content": s.next_assistant},
                ],
            }
            for s in evals
        ],
    )
    return P


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def conv(i: int, good: bool, turns: int = 1, system: str | None = None) -> list[dict]:
    """A toy conversation whose assistant replies are all good or all bad (a learnable contrast)."""
    msgs = [{"role": "system", "content": system}] if system else []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"question {i}.{t} " + "please " * ((i + t) % 4)})
        reply = "good helpful answer " if good else "bad unrelated reply "
        msgs.append({"role": "assistant", "content": reply * (1 + (i + t) % 3)})
    return msgs


def toy_pairs(n: int, kind: str = "d", turns: int = 1) -> list[PreferencePair]:
    return [
        PreferencePair(conv(i, True, turns), conv(i, False, turns), {"pair_id": f"{kind}{i}", "kind": kind})
        for i in range(n)
    ]


def tiny_cfg(backbone: str, **kw) -> TrainConfig:
    # head_init "normal": an untrained head scores conversations apart, so parity checks on fresh models bite
    base = dict(
        backbone=backbone,
        num_layers=None,
        backend="transformers",
        max_steps=6,
        batch_size=4,
        learning_rate=5e-3,
        save_every=2,
        max_length=256,
        seeds=[0],
        head_init="normal",
    )
    base.update(kw)
    return TrainConfig(**base)


# --- what each DVC stage really depends on -----------------------------------------------------------------


def dvc_stages(dvc: dict) -> dict[str, dict]:
    """dvc.yaml stages as DVC runs them: foreach expanded ("train@baseline"), ${paths.…} from params.yaml."""
    from music.config import read_params_file
    from music.pipeline.dvc_file import expand_stages

    return expand_stages(dvc, read_params_file(Path(__file__).resolve().parents[1] / "params.yaml"))


def stage_paths(spec: dict, key: str) -> list[str]:
    """The paths listed under deps / outs / metrics of a stage (entries may be {path: options})."""
    from music.pipeline.dvc_file import entry_paths

    return entry_paths(spec, key)


def covered(path: str, listed: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in listed)


def _module_file(repo: Path, module: str) -> Path | None:
    p = repo / Path(*module.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def music_imports(repo: Path, source: str) -> set[str]:
    """The music modules a piece of source imports (absolute imports, at any depth in the code)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "music"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "music":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from music import sources`
    return {m for m in found if _module_file(repo, m)}


def stage_code(repo: Path, stage: str) -> set[str]:
    """Repository files a stage's code runs: its notebook's music imports, transitively, with their packages'
    __init__ files, plus the folder of any module that reads files beside itself (prompt texts)."""
    from music.pipeline.notebooks import NOTEBOOKS

    cells = json.loads((repo / "notebooks" / NOTEBOOKS[stage]).read_text(encoding="utf-8"))["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return module_code(repo, music_imports(repo, source) | {"music.pipeline.notebooks"})


def module_code(repo: Path, modules: set[str]) -> set[str]:
    """Repository files that importing `modules` runs: their music imports, transitively, with their packages'
    __init__ files, plus the folder of any module that reads files beside itself (prompt texts)."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += music_imports(repo, _module_file(repo, module).read_text(encoding="utf-8"))
    files = set()
    for module in seen:
        path = _module_file(repo, module)
        files.add(str(path.relative_to(repo)))
        if "__file__" in path.read_text(encoding="utf-8"):
            files.add(str(path.parent.relative_to(repo)))
    return files


def missing_code_deps(repo: Path, dvc: dict) -> dict[str, list[str]]:
    """stage -> code files it runs that its deps do not cover (empty when dvc.yaml is complete)."""
    out = {}
    for name, spec in dvc_stages(dvc).items():
        stage = spec["cmd"].split()[3]  # python -m music.pipeline.notebooks STAGE [...]
        missing = sorted(f for f in stage_code(repo, stage) if not covered(f, stage_paths(spec, "deps")))
        if missing:
            out[name] = missing
    return out


def missing_read_deps(stages: dict[str, dict], reads: dict[str, set[str]]) -> dict[str, list[str]]:
    """stage -> repository paths it read (as named in the default profile) that are neither deps nor outputs."""
    out = {}
    for name, spec in stages.items():
        listed = stage_paths(spec, "deps") + stage_paths(spec, "outs") + stage_paths(spec, "metrics")
        bad = sorted(p for p in reads.get(name, ()) if not covered(p, listed))
        if bad:
            out[name] = bad
    return out


class WordOverlapEncoder:
    """Stands in for the sentence encoder (music.pairs.relevance): cosine of bag-of-words counts."""

    def similarity(self, a, b):
        import math
        import re
        from collections import Counter

        def vec(t):
            return Counter(re.findall(r"\w+", t.lower()))

        out = []
        for x, y in zip(a, b):
            u, v = vec(x), vec(y)
            dot = sum(u[w] * v[w] for w in u)
            norm = math.sqrt(sum(c * c for c in u.values()) * sum(c * c for c in v.values()))
            out.append(round(dot / norm, 6) if norm else 0.0)
        return out


# --- what an executed notebook shows ------------------------------------------------------------------------


def unrendered_figures(nb: dict) -> list[str]:
    """Cells of an executed notebook (its JSON) that show a figure as text (`<Figure size 640x480 with 1 Axes>`)
    instead of an image: what a notebook prints when a package switched its inline backend off."""
    bad = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            data = out.get("data", {})
            text = "".join(data.get("text/plain", "")) + "".join(out.get("text", ""))
            if ("<Figure size" in text or "FacetGrid at 0x" in text) and "image/png" not in data:
                bad.append(f"cell {i}: {text.strip()[:80]}")
    return bad


def image_outputs(nb: dict) -> int:
    """How many outputs of an executed notebook carry a PNG."""
    return sum(
        "image/png" in out.get("data", {})
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for out in c.get("outputs", [])
    )


class LoopbackJSONServer:
    """A loopback (127.0.0.1) HTTP server in a thread that answers each POST with `respond(body) -> (status,
    json)`: the fake OpenAI-compatible endpoints of the chat tests. `url` ends in /v1; call close()."""

    def __init__(self, respond):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                code, obj = respond(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def write_sharegpt(path: Path, records: list[tuple[str, list[dict]]]) -> None:
    """A ShareGPT-format source file: (id, messages) per record."""
    role = {"user": "human", "assistant": "gpt", "system": "system"}
    lines = [
        json.dumps({"id": cid, "conversations": [{"from": role[m["role"]], "value": m["content"]} for m in msgs]})
        for cid, msgs in records
    ]
    path.write_text("\n".join(lines) + "\n")


def retrieval_project(root: Path) -> Params:
    """write_seed_files (3 train, 2 eval seeds; turn 1 the real next request "Real next user {i}?", divergence
    real, no margin filter) plus a ShareGPT seed source whose openings are the pool of method retrieve: two near
    misses (pool_0, pool_1), a held-out conversation and a copy of a held-out seed's opening under another id
    (never in the pool), and a request far from every original (far_0)."""
    P = write_seed_files(root, n_train=3, n_eval=2)
    P.simulate.turns, P.simulate.real_next_user = 2, True
    P.contrast.divergence, P.contrast.min_contrast_margin, P.contrast.min_music_train_pairs = "real", None, 0
    P.contrast.d_pairs = P.heldout.quality_mtbench = False
    P.seed.source, P.seed.path = "sharegpt", str(root / "source.jsonl")

    def chat(*requests):
        return [
            m
            for i, r in enumerate(requests)
            for m in ({"role": "user", "content": r}, {"role": "assistant", "content": f"reply {i}"})
        ]

    eval_seed = make_seeds(2, "eval")[0]
    write_sharegpt(
        root / "source.jsonl",
        [
            ("pool_0", chat("Real next user story about dogs?")),
            ("pool_1", chat("Next user question on cats?")),
            ("eval-conv0", chat("Real next user 0 again?")),  # a held-out conversation
            ("copy_0", eval_seed.context),  # a held-out seed's opening under another id
            ("far_0", chat("Translate this into French")),
        ],
    )
    return P
