"""Running the core from a cell: the loop-thread machinery lives in ``nbfanout.core.sync``."""

from nbfanout.core.sync import CLEANUP_TIMEOUT_S, POLL_S, LoopJob, background_loop, call_in_loop

__all__ = ["CLEANUP_TIMEOUT_S", "POLL_S", "LoopJob", "background_loop", "call_in_loop"]
