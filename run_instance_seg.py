#!/usr/bin/env python
"""Fine-tune Mask2Former with a DINOv3 backbone for instance, semantic or panoptic segmentation.

    python run_instance_seg.py --output_dir out                    # offline default: synthetic shapes, small model
    python run_instance_seg.py --model_name_or_path <model> --data_dir <roboflow-coco-folder> --output_dir out
    python run_instance_seg.py --preset dinov3-vits16 --dataset_name <hf-dataset> --output_dir out --task semantic

Options: `python run_instance_seg.py --help` (model, data, augmentation and evaluation groups, then transformers'
TrainingArguments). A wrong flag, path or file stops the run with one `error:` line (exit code 2); `--debug` shows
the traceback. The work is done by `mask2former_dinov3.finetune`; see the README for multi-GPU, multi-node, DeepSpeed
and FSDP.
"""

from mask2former_dinov3.finetune import cli


def main():
    """Parse the command line (HfArgumentParser) and run training / evaluation; user errors exit with code 2."""
    cli()


if __name__ == "__main__":
    main()
