"""Serve a model on an OpenAI-compatible endpoint with `transformers serve`, offline.

    python -m music.chat.serve [MODEL] [--host 127.0.0.1] [--port 8000] [--device cpu] [--dtype float32]

MODEL is the embedded id (default), a local folder or a hub id; the embedded id is converted once
into its local folder (music.models.resolve_model_path), which is also the name clients send as
`model` (the server is pinned to it). Hub access and transformers' update check are switched off
unless MODEL is a hub id. The tests run simulate and contrast against this server
(tests/test_real_server.py); for real runs serve a strong model with vLLM or SGLang instead.

Needs the serving extras pinned in requirements/serve.txt (fastapi, uvicorn, openai, pydantic, rich).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from music.config import EMBEDDED_MODEL

    ap = argparse.ArgumentParser(prog="python -m music.chat.serve", description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=EMBEDDED_MODEL)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
    from music.models import resolve_model_path

    path = resolve_model_path(args.model)
    if Path(path).is_dir():  # a local folder needs no hub; make sure nothing tries
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        print("transformers serve needs its serving extras: pip install -r requirements/serve.txt", file=sys.stderr)
        return 2
    from transformers.cli.serve import Serve

    print(f"serving {path} at http://{args.host}:{args.port}/v1 (send model={path!r})", flush=True)
    Serve(force_model=path, host=args.host, port=args.port, device=args.device, dtype=args.dtype, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
