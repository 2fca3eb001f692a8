"""Stand-in for transformers' `tests/exporters/test_export.py`, which the PyPI sdist does not ship.

Written by mask2former-dinov3's test harness (tests/upstream/). `ModelTesterMixin` inherits `ExportTesterMixin`;
upstream's version runs its `torch.export` tests when `test_torch_exportable` is true. Without its code this stand-in
is empty, and Mask2FormerDINOv3's own `torch.export` test (tests/upstream/test_upstream_export.py) exports both
backbone families and compares the exported program with eager instead.
"""


class ExportTesterMixin:
    """Empty stand-in: see tests/upstream/test_upstream_export.py for the export tests that run instead."""
