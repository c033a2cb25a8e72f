"""Fill a Hugging Face cache as huggingface_hub itself lays it out, from local folders served by a fake hub.

Run as ``python tests/_fake_hub.py org/name=FOLDER ...`` with ``HF_HOME`` set (a separate process: huggingface_hub
reads it at import): every file of each folder is downloaded with ``hf_hub_download`` from a local HTTP server
answering ``/{repo}/resolve/{revision}/{file}`` (HEAD and GET, the two answers it needs) at revision ``main`` or
:data:`COMMIT`.
"""

import hashlib
import http.server
import sys
import threading
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill(repos):
    """Serve ``{repo id: folder}`` and download every file into the cache of ``$HF_HOME``."""
    from huggingface_hub import hf_hub_download

    served = {r: {p.relative_to(src).as_posix(): p.read_bytes() for p in Path(src).rglob("*") if p.is_file()}
              for r, src in repos.items()}

    class Hub(http.server.BaseHTTPRequestHandler):
        def _answer(self, body):
            here = next((r for r in served if self.path.startswith(f"/{r}/resolve/")), None)
            files = served.get(here, {})
            rest = self.path.split("?")[0][len(f"/{here}/resolve/"):] if here else ""
            rev, _, name = rest.partition("/")
            if rev not in ("main", COMMIT) or name not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()
                return
            data = files[name]
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self):  # noqa: N802 - the handler's protocol names
            self._answer(False)

        def do_GET(self):  # noqa: N802
            self._answer(True)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for r, files in served.items():  # snapshots/<commit>/x -> ../../blobs/<sha256>, refs/main
            for name in files:
                hf_hub_download(r, name, endpoint=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


if __name__ == "__main__":
    fill(dict(a.split("=", 1) for a in sys.argv[1:]))
