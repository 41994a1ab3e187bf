"""CUDA kernel tests (run on a GPU machine; skipped elsewhere)."""
