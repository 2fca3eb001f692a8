#!/usr/bin/env python
"""Fine-tune Mask2Former with a DINOv3 backbone for instance, semantic or panoptic segmentation.

    python run_instance_seg.py --backbone_name_or_path facebook/dinov3-vits16-pretrain-lvd1689m --data_dir my_coco --output_dir out
    python run_instance_seg.py --model_name_or_path <model> --data_dir <roboflow-coco-folder> --output_dir out
    python run_instance_seg.py --preset dinov3-vits16 --dataset_name <hf-dataset> --output_dir out --task semantic
    python run_instance_seg.py --output_dir out                    # offline default: synthetic shapes, small model

Options: `python run_instance_seg.py --help` (model, data, augmentation and evaluation groups, then transformers'
TrainingArguments). A wrong flag, path or file stops the run with one `error:` line (exit code 2); `--debug` shows
the traceback. The run is `mask2former_dinov3.finetune.main`; docs/finetuning.md covers multi-GPU, multi-node,
DeepSpeed and FSDP.
"""

from mask2former_dinov3.arguments import cli
from mask2former_dinov3.finetune import main


if __name__ == "__main__":
    cli(main)
