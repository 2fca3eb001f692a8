"""Stand-in for transformers' `tests/utils/test_configuration_utils.py`, which the PyPI sdist does not ship.

Written by mask2former-dinov3's test harness (tests/upstream/). `tests/test_configuration_common.py` imports only
`config_common_kwargs` from it: `ConfigTester.check_config_arguments_init` builds a config from these kwargs and
checks that every one of them reads back unchanged (`dtype` is checked to become `torch.float16`). That check only
means something if each value differs from `PreTrainedConfig`'s default, so every value below is a non-default one.

The keys are the user-settable fields of transformers 5.x's `PreTrainedConfig` (plus `output_attentions`, which
its `__post_init__` takes as a kwarg). Left out on purpose: `transformers_version` (bookkeeping written on save) and
`is_encoder_decoder` (describes an architecture, and upstream's own list leaves it out too).
`test_config_common_kwargs_stand_in_is_complete` (tests/upstream/upstream_testers.py) checks that this dict covers
every such field with a non-default value, so a new field in a later transformers version is noticed.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["Mask2FormerDINOv3ForUniversalSegmentation"],
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
}
