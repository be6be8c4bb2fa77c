"""Several processes over shards of a corpus, writing into one activation cache at the same time
(the multi-GPU recipe of docs/scale.md): nothing is lost, and a final capture of the whole corpus
reads every text from the cache with values equal to a fresh capture."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import tiny_models
import torch

from steerkit.capture import capture, parse_pooling
from steerkit.models import load

WRITERS = 4
TEXTS = [
    f"Story {i}: the {w} crossed the river at dawn." for i, w in enumerate("fox owl cat dog elk bee ant yak".split())
]
TEXTS += [f"Note {i}: it rained for {i + 2} days." for i in range(8)]

CHILD = textwrap.dedent(
    """
    import json, sys
    from steerkit.capture import capture, parse_pooling
    from steerkit.models import load
    lm = load(sys.argv[1])
    texts = json.loads(sys.argv[3])
    capture(lm, texts, [1, 3], sites=("resid", "mlp"), pooling=parse_pooling("mean"), max_batch_tokens=20,
            cache_dir=sys.argv[2], cache_flush_seconds=0)
    """
)


def test_four_processes_share_one_cache(tmp_path, tiny_tok):
    import json

    model_dir = tmp_path / "tiny-llama"
    tiny_models.build("llama").save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    shards = [TEXTS[i::WRITERS] for i in range(WRITERS)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(model_dir), str(cache), json.dumps(s)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in shards
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    lm = load(str(model_dir))
    kw = {"sites": ("resid", "mlp"), "pooling": parse_pooling("mean"), "max_batch_tokens": 20}
    cached = capture(lm, TEXTS, [1, 3], cache_dir=cache, **kw)
    assert cached.stats["n_cached"] == len(TEXTS) and cached.stats["n_computed"] == 0
    fresh = capture(lm, TEXTS, [1, 3], **kw)
    for site in ("resid", "mlp"):
        for layer in (1, 3):
            torch.testing.assert_close(cached.site(site)[layer], fresh.site(site)[layer], atol=1e-6, rtol=1e-6)
