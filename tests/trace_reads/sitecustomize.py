"""Put on PYTHONPATH with MUSIC_TRACE_READS=<file>: the process logs every file it opens for reading.

tests/test_notebooks.py runs each stage's notebook kernel with it, to check that dvc.yaml lists the data
each stage reads. An audit hook sees every open, including files opened by C extensions' Python callers.
"""

import os
import sys

_LOG = os.environ.get("MUSIC_TRACE_READS")
if _LOG:
    _fd = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # os.write does not raise "open" events

    def _hook(event, args):
        if event != "open" or not args:
            return
        path, mode = args[0], (args[1] if len(args) > 1 else "r")
        if isinstance(path, int) or (mode is not None and any(c in str(mode) for c in "wax+")):
            return
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):  # a folder (shutil.rmtree opens each, relative to its parent's descriptor)
            return
        os.write(_fd, (path + "\n").encode())

    sys.addaudithook(_hook)
