"""A message's timings and its peak anonymous memory: what a client reports per message."""

from __future__ import annotations

import time

import numpy as np

from pfms_client.timing import AnonPeak, rss_anon_kib


def test_anon_peak_sees_a_short_allocation_and_not_a_mapped_file(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.ones((64, 1 << 20), dtype=np.uint8))  # 64 MiB on disk
    peak = AnonPeak(interval=0.01)
    base = peak.mib()
    mapped = np.load(path, mmap_mode="r")
    assert int(mapped.sum(dtype=np.int64)) == 64 << 20  # every page read: page cache, not anon
    time.sleep(0.05)
    assert peak.mib() - base < 16
    block = np.ones(96 << 20, dtype=np.uint8)  # 96 MiB anonymous, then freed
    time.sleep(0.1)
    del block
    time.sleep(0.05)
    assert rss_anon_kib() / 1024 - base < 48  # gone now...
    assert peak.mib() - base > 80  # ...but the peak saw it
    peak.stop()


def test_the_sampler_thread_ends_when_its_owner_is_dropped():
    import gc

    peak = AnonPeak(interval=0.01)
    thread = peak.thread
    assert thread.is_alive()
    del peak
    gc.collect()
    thread.join(timeout=2.0)
    assert not thread.is_alive()
