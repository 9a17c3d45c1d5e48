"""Speed and memory paths, never changing exact mode's numbers: the per-device kernel plan (plan.py), numeric modes
(precision.py), int8 / pre-packed / batched-attention / time-major kernels (int8.py, packed.py, fastattn.py,
featext.py), file-backed weights and heap tuning (filepages.py, heap.py), device choice (devices.py)."""
