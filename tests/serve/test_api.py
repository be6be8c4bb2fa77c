"""`steerkit serve` against oracles: a real uvicorn server on loopback, driven by the official `openai`
client and httpx, over a tiny random Llama and a real extract run.

Oracles: greedy text == HF generate() (unsteered) and == `steerkit steer` (steered); readout rows ==
an independent full forward's residuals projected as `read` projects them, and == /v1/read; strength 0
== no steering bit for bit; a request in a mixed-steering batch == the same request alone; streamed
chunks concatenate to the non-streamed answer."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import torch
from click.testing import CliRunner

from steerkit.cli import main
from steerkit.serve.app import create_app
from steerkit.serve.context import Limits, ServeContext
from steerkit.serve.engine import EmbeddedEngine

from .server import ServerThread

CHAT_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(serve_lm, serve_vectors, serve_run):
    serve_lm.tokenizer.chat_template = CHAT_TEMPLATE
    ctx = ServeContext(serve_lm, serve_vectors, serve_run, "tiny-llama", 1, limits=Limits(max_new_tokens=64),
                       api_key=KEY)  # fmt: skip
    engine = EmbeddedEngine(serve_lm, max_batch=8, max_queue=16)
    with ServerThread(create_app(ctx, engine)) as s:
        s.engine, s.ctx = engine, ctx
        yield s
    serve_lm.tokenizer.chat_template = None


def post(s, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(s.url + path, content=data, headers=headers, timeout=60, **kw)


def complete(s, **body):
    r = post(s, "/v1/completions", {"temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)


def test_api_shape_with_the_openai_client(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny-llama"]
    out = c.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=5, temperature=0,
                               extra_body={"readout": {"concepts": ["calm", "sad"]}})  # fmt: skip
    assert out.object == "text_completion" and out.usage.completion_tokens == 5
    ro = out.choices[0].model_extra["readout"]
    assert ro["concepts"] == ["calm", "sad"] and ro["layer"] == 1 and len(ro["tokens"]) == 5
    chat = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi there"}],
                                     max_tokens=4, temperature=0)  # fmt: skip
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    chunks = list(c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi there"}],
                                            max_tokens=4, temperature=0, stream=True))  # fmt: skip
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == chat.choices[0].message.content
    concepts = httpx.get(server.url + "/v1/concepts", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert concepts["concepts"] == ["calm", "angry", "happy", "sad"] and concepts["layers"] == [1, 3]


def test_greedy_unsteered_equals_generate(server, serve_lm):
    tok = serve_lm.tokenizer
    for prompt in ["Once upon a time", "The"]:
        ids = tok(prompt, return_tensors="pt").input_ids
        ref = serve_lm.model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
        want = tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
        assert complete(server, prompt=prompt, max_tokens=12)["text"] == want


def test_steered_equals_steer_cli(server, serve_run, serve_model_dir):
    for concepts, layers, scale in [({"calm": 8.0}, [1], "absolute"), ({"sad": -6.0, "happy": 3.0}, [1, 3], "absolute"),
                                    ({"sad": -3.0, "happy": 2.0}, [1, 3], "equal")]:  # fmt: skip
        got = complete(server, prompt="The meeting began", max_tokens=15,
                       steer={"concepts": concepts, "layers": layers, "scale": scale})["text"]  # fmt: skip
        args = ["steer", "--vectors", str(serve_run), "--prompt", "The meeting began", "--max-new-tokens", "15",
                "--layers", ",".join(map(str, layers)), "--scale", scale]  # fmt: skip
        for k, v in concepts.items():
            args += ["--concept", f"{k}={v}"]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        assert res.output.split("\n", 1)[1].rstrip("\n") == "The meeting began" + got
        assert got != complete(server, prompt="The meeting began", max_tokens=15)["text"]  # steering did something


def test_readout_equals_an_independent_forward_and_read(server, serve_lm, serve_vectors):
    cv = serve_vectors
    ch = complete(
        server,
        prompt="She opened the letter",
        max_tokens=10,
        readout={"prompt": True},
        steer={"concepts": {"calm": 5.0}, "layers": [3]},
    )  # fmt: skip (steering after the readout block)
    ro = ch["readout"]
    rows = ro["prompt"] + ro["tokens"]
    ids = serve_lm.tokenizer("She opened the letter")["input_ids"]
    assert len(ro["tokens"]) == 10
    assert [r["id"] for r in ro["prompt"]] == ids
    full = torch.tensor([ids + [r["id"] for r in ro["tokens"]]])
    with torch.no_grad():
        hs = serve_lm.model(full, output_hidden_states=True).hidden_states[2][0]  # block 1's output
    ref = cv.read_scores(hs, 1)  # (T, concepts): what `read` computes per token (the run's probe)
    assert ro["kind"] == "log_prob" and 1 in cv.probes
    torch.testing.assert_close(torch.tensor([r["scores"] for r in rows]), ref, rtol=1e-5, atol=1e-5)
    assert [r["token"] for r in ro["prompt"]] == [serve_lm.tokenizer.decode([i]) for i in ids]
    # /v1/read of the prompt is `read` over HTTP: the same rows as the prompt readout
    r = post(server, "/v1/read", {"text": "She opened the letter"}).json()
    torch.testing.assert_close(torch.tensor([t["scores"] for t in r["readout"]["tokens"]]),
                               torch.tensor([t["scores"] for t in ro["prompt"]]), rtol=1e-5, atol=1e-6)  # fmt: skip
    assert set(r["pooled"]) == set(cv.concepts)


def test_zero_strength_is_no_steering_bit_for_bit(server):
    base = complete(server, prompt="It was late", max_tokens=12, readout=True)
    zero = complete(server, prompt="It was late", max_tokens=12, readout=True,
                    steer={"concepts": {"calm": 0.0, "sad": 0}, "layers": [1, 3]})  # fmt: skip
    assert zero["text"] == base["text"] and zero["readout"] == base["readout"]


def test_batch_equals_alone_with_mixed_steering(server):
    reqs = [
        {"prompt": "The meeting began", "steer": {"concepts": {"calm": 6.0}, "layers": [1]}},
        {"prompt": "It was late at night and", "steer": {"concepts": {"sad": -4.0}, "layers": [3]}},
        {"prompt": "Hi", "readout": {"concepts": ["happy"]}},
        {"prompt": "The dog", "steer": {"concepts": {"angry": 3.0, "calm": 1.0}, "mode": "ablate_then_add"}},
        {"prompt": "She said", "steer": {"concepts": {"happy": 1.0}, "mode": "project_out", "layers": [1, 3]}},
        {"prompt": "Once", "temperature": 0.9, "seed": 7, "top_p": 0.9},
    ]
    alone = [complete(server, max_tokens=10, **r) for r in reqs]
    server.engine.peak = 0
    together: list = [None] * len(reqs)
    gate = threading.Barrier(len(reqs))

    def go(i):
        gate.wait()
        together[i] = complete(server, max_tokens=10, **reqs[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert server.engine.batched and server.engine.continuous
    assert server.engine.peak >= 2  # some requests really shared the batch
    for a, b in zip(alone, together, strict=True):
        assert a["text"] == b["text"]
        if "readout" in a:
            torch.testing.assert_close(torch.tensor([t["scores"] for t in a["readout"]["tokens"]]),
                                       torch.tensor([t["scores"] for t in b["readout"]["tokens"]]), rtol=1e-4, atol=1e-5)  # fmt: skip


def test_stream_chunks_carry_their_tokens_rows(server):
    body = {"prompt": "The letter said", "max_tokens": 12, "temperature": 0, "readout": {"prompt": True},
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    whole = complete(server, **{k: v for k, v in body.items() if k not in ("stream", "stream_options")})
    chunks = []
    with httpx.stream("POST", server.url + "/v1/completions", content=json.dumps(body),
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:  # fmt: skip
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        assert ln.startswith("data: ")
        chunks.append(json.loads(ln[6:]))
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    rows = [t for c in chunks for t in c["choices"][0]["readout"]["tokens"]]
    assert rows == whole["readout"]["tokens"]
    assert chunks[0]["choices"][0]["readout"]["prompt"] == whole["readout"]["prompt"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    for c in chunks[:-1]:  # every token chunk carries exactly the rows of the tokens it sends
        assert len(c["choices"][0]["readout"]["tokens"]) >= 1


def test_stop_strings(server):
    full = complete(server, prompt="Once upon a time", max_tokens=20)
    stop = full["text"][5:7]
    ch = complete(server, prompt="Once upon a time", max_tokens=20, stop=[stop], readout=True)
    assert ch["finish_reason"] == "stop" and ch["text"] == full["text"][: full["text"].index(stop)]
    # the readout rows are those of the tokens wholly before the stop string, in order
    ids = [t["id"] for t in ch["readout"]["tokens"]]
    assert len(ids) < 20
    assert ch["text"].startswith(server.ctx.lm.tokenizer.decode(ids, skip_special_tokens=True))


BAD = [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"prompt": ""}, 400, "empty"),
    ({"prompt": "   "}, 400, "empty"),
    ({}, 400, "'prompt' is required"),
    ({"prompt": 3}, 400, "'prompt'"),
    ({"prompt": ["a", "b"]}, 400, "list of several prompts"),
    ({"prompt": "x", "steer": {"concepts": {"clam": 1}}}, 400, "did you mean calm"),
    ({"prompt": "x", "steer": {"concepts": {"calm": 1e9}}}, 400, "within +-"),
    ({"prompt": "x", "steer": {"concepts": {"calm": "4"}}}, 400, "must be a number"),
    ({"prompt": "x", "steer": {"concepts": {"calm": 1}, "layers": [2]}}, 400, "layer 2 is not in the run"),
    ({"prompt": "x", "steer": {"concepts": {"calm": 1}, "mode": "multiply"}}, 400, "steer.mode"),
    ({"prompt": "x", "steer": {"concepts": {"calm": 1}, "scale": "unit"}}, 400, "absolute, equal, relative"),
    ({"prompt": "x", "steer": {"concepts": {}}}, 400, "non-empty"),
    ({"prompt": "x", "steer": {"concepts": {"calm": None}}}, 400, "no operating point"),
    ({"prompt": "x", "steer": {"concepts": {"calm": 1}, "file": "/etc/passwd"}}, 400, "unknown field steer.file"),
    ({"prompt": "x", "steer": "calm"}, 400, "'steer' must be an object"),
    ({"prompt": "x", "readout": {"layer": 7}}, 400, "layer 7 is not in the run"),
    ({"prompt": "x", "readout": {"concepts": []}}, 400, "non-empty list"),
    ({"prompt": "x", "readout": {"concepts": ["nope"]}}, 400, "unknown concept"),
    ({"prompt": "x", "max_tokens": 65}, 400, "--max-new-tokens-limit is 64"),
    ({"prompt": "x", "max_tokens": 0}, 400, "between 1 and 64"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "must be an integer"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "n": 2}, 400, "one choice per request"),
    ({"prompt": "x", "logprobs": 3}, 400, "logprobs are not supported"),
    ({"prompt": "x", "frequency_penalty": 0.5}, 400, "penalties"),
    ({"prompt": "x", "stop": [1]}, 400, "'stop'"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    ({"prompt": "x", "stream": "yes"}, 400, "'stream'"),
    ({"prompt": "x", "frobnicate": 1}, 400, "unknown field 'frobnicate'"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "not served here"),
    ({"prompt": "x " * 300, "max_tokens": 60}, 400, "context"),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD, ids=range(len(BAD)))
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(server, body, status, needle):
    r = post(server, "/v1/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and set(err) == {"message", "type", "param", "code"}
    assert complete(server, prompt="ok", max_tokens=2)["finish_reason"] == "length"


def test_bad_chat_read_auth_size_and_paths(server):
    assert post(server, "/v1/chat/completions", {"messages": []}).status_code == 400
    assert post(server, "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}).status_code == 400
    assert (
        post(
            server, "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
        ).status_code
        == 400
    )
    assert post(server, "/v1/read", {"text": ""}).status_code == 400
    assert post(server, "/v1/read", {"text": "x", "layer": 9}).status_code == 400
    assert post(server, "/v1/read", {"text": "x", "path": "/etc"}).status_code == 400
    r = post(server, "/v1/completions", {"prompt": "x"}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert post(server, "/v1/completions", {"prompt": "x"}, key="wrong").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # open without a key
    assert httpx.get(server.url + "/").status_code == 200
    big = json.dumps({"prompt": "x" * (2 << 20)})
    assert post(server, "/v1/completions", big).status_code == 413
    r = httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}).status_code == 405
    assert complete(server, prompt="still here", max_tokens=2)["text"] is not None


def test_disconnect_frees_the_row(server):
    before = server.engine.finished["cancelled"]
    body = {"prompt": "Once", "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", content=json.dumps(body),
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:  # fmt: skip
        next(r.iter_lines())  # the first chunk, then hang up
    for _ in range(1200):  # up to 60 s on a loaded machine
        if server.engine.finished["cancelled"] > before:
            break
        threading.Event().wait(0.05)
    assert server.engine.finished["cancelled"] == before + 1
    assert complete(server, prompt="next", max_tokens=2)["finish_reason"] == "length"


def test_full_queue_answers_503_with_retry_after(serve_lm, serve_vectors, serve_run):
    ctx = ServeContext(serve_lm, serve_vectors, serve_run, "tiny-llama", 1)
    engine = EmbeddedEngine(serve_lm, max_batch=1, max_queue=1, batched=True)
    gate = threading.Event()
    with ServerThread(create_app(ctx, engine)) as s:
        busy = threading.Event()

        def hold() -> None:  # the worker is busy until the gate opens
            busy.set()
            gate.wait(120)

        engine.call(hold)
        try:
            assert busy.wait(60)  # the worker took the call: the queue is empty again
            waiting = threading.Thread(
                target=lambda: post(s, "/v1/completions", {"prompt": "a", "max_tokens": 2}, key=None)
            )
            waiting.start()
            for _ in range(3000):  # until request a waits in the queue (up to 60 s on a loaded machine)
                if engine.waiting >= 1:
                    break
                threading.Event().wait(0.02)
            assert engine.waiting == 1
            r = post(s, "/v1/completions", {"prompt": "b", "max_tokens": 2}, key=None)
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue" in r.json()["error"]["message"]
        finally:
            gate.set()  # never leave the worker held, whatever failed
        waiting.join(30)
        assert post(s, "/v1/completions", {"prompt": "c", "max_tokens": 2}, key=None).status_code == 200
