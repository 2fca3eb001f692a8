"""Stand-in for transformers' `tests/generation/test_utils.py`, which the PyPI sdist does not ship.

Written by mask2former-dinov3's test harness (tests/upstream/). `ModelTesterMixin` imports `GenerationTesterMixin`
only to check, in `test_generation_tester_mixin_inheritance`, that a tester inherits it exactly when the model can
`generate`. Mask2FormerDINOv3 is a vision model that cannot generate, so its testers must not inherit it, and an empty
class is all that check needs.
"""


class GenerationTesterMixin:
    """Empty stand-in: generation tests do not apply to a segmentation model."""
