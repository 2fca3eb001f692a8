"""Packaging for mask2former-dinov3."""

from setuptools import find_packages, setup


TRAIN = ["accelerate>=1.0", "datasets>=3.0", "albumentations>=2.0"]
EXPORT = ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"]
# ruff as pinned by transformers' setup.py (5.25.0): the upstream port is checked with transformers' ruff settings.
TEST = TRAIN + EXPORT + ["pytest>=8", "parameterized>=0.9", "ruff==0.14.10"]

setup(
    name="mask2former-dinov3",
    version="0.3.0",
    description="DINOv3 backbones (ViT and ConvNeXt) for Mask2Former in Hugging Face Transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mask2former_dinov3", "mask2former_dinov3.*"]),
    python_requires=">=3.10",
    # torch is not pinned here: install the build for your hardware first (see README).
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23,<6",
        "huggingface_hub",
        "safetensors",
        "numpy",
        "pillow",
        "scipy",
        # The prediction CLI writes COCO RLE and shows a progress bar without the training extras.
        "pycocotools>=2.0.7",
        # COCOeval with its matching in C++: mask AP of images with thousands of instances in seconds.
        "faster-coco-eval>=1.8",
        "tqdm",
        # Microscopy label images (16/32-bit TIFF): read for training, written by `predict --label_images`.
        "tifffile",
    ],
    extras_require={"train": TRAIN, "export": EXPORT, "test": TEST},
    entry_points={
        "console_scripts": [
            "mask2former-dinov3-convert=mask2former_dinov3.convert:main",
            "mask2former-dinov3-predict=mask2former_dinov3.predict:main",
            "mask2former-dinov3-export=mask2former_dinov3.export:main",
        ]
    },
)
