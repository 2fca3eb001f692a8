"""``python -m mask2former_dinov3.convert``: Meta's original DINOv3 ViT ``.pth`` -> transformers-format folder.

The implementation lives in `mask2former_dinov3.pretrained` (also installed as ``mask2former-dinov3-convert``).
"""

import sys

from .pretrained import main


if __name__ == "__main__":
    sys.exit(main())
