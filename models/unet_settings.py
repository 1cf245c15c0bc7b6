"""Reading diffusers' UNet configs for the trunk in unet_blocks.py: every setting of UNet2DConditionModel and
UNet2DModel with diffusers' default (0.42.1), for keys a config.json leaves out, and the checks the Kandinsky 2.2
and Karlo UNets share. A config asking for something the trunk does not build is refused (ValueError naming the key)
rather than loaded into the wrong network.
"""

from typing import Any

# None where diffusers takes several types (an int or a per-level list), which the checks look at themselves.
CONDITION_UNET_DEFAULTS = dict(
    sample_size=None,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=None,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    dropout=0.0,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=None,
    transformer_layers_per_block=None,
    reverse_transformer_layers_per_block=None,
    encoder_hid_dim=None,
    encoder_hid_dim_type=None,
    attention_head_dim=None,
    num_attention_heads=None,
    dual_cross_attention=False,
    use_linear_projection=False,
    class_embed_type=None,
    addition_embed_type=None,
    addition_time_embed_dim=None,
    num_class_embeds=None,
    upcast_attention=False,
    resnet_time_scale_shift="default",
    resnet_skip_time_act=False,
    resnet_out_scale_factor=1.0,
    time_embedding_type="positional",
    time_embedding_dim=None,
    time_embedding_act_fn=None,
    timestep_post_act=None,
    time_cond_proj_dim=None,
    conv_in_kernel=3,
    conv_out_kernel=3,
    projection_class_embeddings_input_dim=None,
    attention_type="default",
    class_embeddings_concat=False,
    mid_block_only_cross_attention=None,
    cross_attention_norm=None,
    addition_embed_type_num_heads=64,
)
PLAIN_UNET_DEFAULTS = dict(  # UNet2DModel's
    sample_size=None,
    in_channels=3,
    out_channels=3,
    center_input_sample=False,
    time_embedding_type="positional",
    time_embedding_dim=None,
    freq_shift=0,
    flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D",
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896),
    layers_per_block=2,
    mid_block_scale_factor=1,
    downsample_padding=1,
    downsample_type="conv",
    upsample_type="conv",
    dropout=0.0,
    act_fn="silu",
    attention_head_dim=8,
    norm_num_groups=32,
    attn_norm_num_groups=None,
    norm_eps=1e-5,
    resnet_time_scale_shift="default",
    add_attention=True,
    class_embed_type=None,
    num_class_embeds=None,
    num_train_timesteps=None,
)
_DOWN_BLOCKS = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}  # name → has attention
_UP_BLOCKS = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
# diffusers' defaults, which Kandinsky 2.2 and Karlo keep; older config.json files may omit the newer keys.
DEFAULT_SETTINGS = {
    "act_fn": "silu",
    "time_embedding_type": "positional",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "mid_block_scale_factor": 1,
    "resnet_out_scale_factor": 1.0,
    "attention_type": "default",
}
# Optional diffusers features we leave out: each must be absent, None, False or 0.
ABSENT_FEATURES = (
    "center_input_sample",
    "num_class_embeds",
    "class_embeddings_concat",
    "time_cond_proj_dim",
    "time_embedding_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "num_attention_heads",
    "only_cross_attention",
    "mid_block_only_cross_attention",
    "cross_attention_norm",
    "resnet_skip_time_act",
    "dropout",
)


def unsupported(config: dict[str, Any], key: str) -> ValueError:
    return ValueError(f"unsupported UNet setting {key}={config.get(key, '<missing>')!r}")


def check_settings(config: dict[str, Any], required: dict[str, Any], absent: tuple[str, ...], numbers: tuple[str, ...]):
    """The settings a UNet family fixes: its `required` choices, diffusers' defaults it keeps, the `absent` features
    it leaves out, and single whole `numbers` where diffusers also takes per-level lists."""
    for key, value in required.items():
        if config.get(key) != value:
            raise unsupported(config, key)
    for key, value in DEFAULT_SETTINGS.items():
        if config.get(key, value) != value:
            raise unsupported(config, key)
    for key in absent:
        if config.get(key):
            raise unsupported(config, key)
    for key in numbers:
        if not isinstance(config.get(key), int):  # per-level lists and None are not built
            raise unsupported(config, key)


def attention_levels(config: dict[str, Any]) -> tuple[bool, ...]:
    """Which levels have attention, read from the block types; the up path must mirror the down path."""
    down_types, up_types = list(config.get("down_block_types", ())), list(config.get("up_block_types", ()))
    if not down_types or any(t not in _DOWN_BLOCKS for t in down_types):
        raise unsupported(config, "down_block_types")
    levels = tuple(_DOWN_BLOCKS[t] for t in down_types)
    if [_UP_BLOCKS.get(t) for t in reversed(up_types)] != list(levels):
        raise unsupported(config, "up_block_types")
    if len(config["block_out_channels"]) != len(down_types):
        raise unsupported(config, "block_out_channels")
    return levels
