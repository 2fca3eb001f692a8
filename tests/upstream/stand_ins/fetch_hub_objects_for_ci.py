"""Stand-in for transformers' `utils/fetch_hub_objects_for_ci.py`, which the PyPI sdist does not ship.

Written by mask2former-dinov3's test harness (tests/upstream/). `tests/test_image_processing_common.py` imports
`url_to_local_path` at import time; upstream maps fixture URLs to files its CI pre-fetched. Nothing is pre-fetched
here, so URLs are returned unchanged (the only mixin tests that load such fixtures need two processor backends and
skip themselves before loading anything).
"""


def url_to_local_path(url, return_url_if_not_found=True):
    """Return `url` unchanged: no Hub fixtures are pre-fetched for this harness."""
    return url
