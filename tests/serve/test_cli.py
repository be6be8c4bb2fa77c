"""`steerkit serve` as a user runs it: a real process, its printed addresses, bad options, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

from steerkit.cli import main


def _start(args, env=None):
    proc = subprocess.Popen([sys.executable, "-m", "steerkit", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})  # fmt: skip
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("page "):
            url = line.split()[1].rstrip("/")
            for _ in range(200):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        return proc, url, lines
                except httpx.HTTPError:
                    time.sleep(0.05)
    proc.kill()
    raise AssertionError("".join(lines) + proc.stderr.read())


@pytest.mark.slow
def test_serve_prints_its_addresses_and_sigterm_finishes_in_flight_rows(serve_run):
    proc, url, lines = _start(["--vectors", str(serve_run), "--api-key", "k1", "--shutdown-timeout", "20"])
    try:
        text = "".join(lines)
        assert "4 concepts" in text and "API  http://127.0.0.1:" in text and "API key required" in text
        h = {"Authorization": "Bearer k1"}
        assert httpx.post(url + "/v1/completions", json={"prompt": "x"}, timeout=30).status_code == 401
        got: dict = {"lines": []}
        first = threading.Event()

        def long_request():
            body = {"prompt": "Once", "max_tokens": 60, "temperature": 0, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, headers=h, timeout=60) as r:
                for ln in r.iter_lines():
                    if ln:
                        got["lines"].append(ln)
                        first.set()

        t = threading.Thread(target=long_request)
        t.start()
        assert first.wait(60)  # the request is in flight (its first chunk came) before the signal
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(60) == 0
        assert got["lines"][-1] == "data: [DONE]"  # the in-flight request finished
        fin = json.loads(got["lines"][-2][6:])["choices"][0]["finish_reason"]
        assert fin in ("length", "stop")
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_bad_options_exit_2(serve_run, tmp_path):
    r = CliRunner().invoke(main, ["serve", "--vectors", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["serve", "--vectors", str(serve_run), "--port", "70000"])
    assert r.exit_code == 2 and "--port" in r.output
    r = CliRunner().invoke(main, ["serve", "--vectors", str(serve_run), "--max-batch", "0"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["serve", "--vectors", str(serve_run), "--api-key", " "])
    assert r.exit_code == 2 and "--api-key" in r.output


def test_serve_engine_vllm_without_vllm_is_one_line(serve_run):
    pytest.importorskip("fastapi")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here (the vLLM step tests the engine itself)")
    except ImportError:
        pass
    r = CliRunner().invoke(main, ["serve", "--vectors", str(serve_run), "--engine", "vllm"])
    assert r.exit_code == 2 and "make vllm" in r.output and len(r.output.strip().splitlines()) == 1
