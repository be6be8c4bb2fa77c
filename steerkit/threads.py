"""One thread for small torch work: a context manager shared by the quality metrics and the readout probe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with torch on one thread, then restore the caller's thread count (process-wide).

    Small decompositions and many small matmuls gain nothing from threads and collapse when the cores
    are shared: on the 2-core dev machine under load, eigh of a 200 x 200 matrix took 3 s with 2 threads
    and 0.01 s with 1 (svd of 200 x 4096: 8.8 s vs 0.2 s); the probe's fits ran 10-50x faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
