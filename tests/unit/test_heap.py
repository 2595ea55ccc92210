"""``tessera serve`` settles the heap once its app is built (``local/server.settle_heap``): what was made at start
is frozen out of the collector's walks, and young collections are spaced out (reasons and figures in the code)."""

from __future__ import annotations

import gc

from tessera.local.server import GC_THRESHOLDS, settle_heap


def test_settle_heap_freezes_what_start_made_and_spaces_collections_out():
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # the modules and objects made so far
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > 10 * before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
