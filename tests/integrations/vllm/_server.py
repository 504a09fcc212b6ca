"""`vllm serve` as a child process on a free 127.0.0.1 port, with bounded waits (tests and benchmarks)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 600  # model load + engine start on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, ckpt: str, media_dir: str, log_path: Path, dtype: str = "float32", extra_args=()):
        self.port = free_port()
        self.log = open(log_path, "w")
        vllm = Path(sys.executable).with_name("vllm")
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine as it does in production
        self.proc = subprocess.Popen(
            [str(vllm), "serve", ckpt, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", dtype,
             "--enforce-eager", "--max-model-len", "2048", "--max-num-seqs", "16", "--seed", "0",
             "--allowed-local-media-path", media_dir, "--allowed-media-domains", "127.0.0.1",
             "--limit-mm-per-prompt", '{"image": 2, "video": 1}', "--served-model-name", "vl3",
             "--trust-request-mm-kwargs", *extra_args],  # per-request fps / max_frames / pruning
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(2)
        raise TimeoutError(f"vllm serve not ready after {START_TIMEOUT_S} s; see {self.log.name}")

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
                raise
        self.log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(ckpt: str, media_dir: str, log_path: Path, **kwargs):
    """A started `Server` (ready), stopped on exit unless the caller stopped it."""
    srv = Server(ckpt, media_dir, log_path, **kwargs)
    try:
        srv.wait_ready()
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.stop()
