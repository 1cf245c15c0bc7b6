"""Kandinsky 2.2 decoder UNet: DALL·E 2's image decoder, conditioned on a CLIP image embedding.

Parameter names follow diffusers' `UNet2DConditionModel` (as configured by the Kandinsky 2.2 checkpoints), so its
safetensors load with strict=True. The layout, from the top:

    image embedding ─┬─ Linear + LayerNorm ──────────────── added to the sinusoidal time embedding → emb
                     └─ Linear + LayerNorm → 32 tokens ──── context for every attention layer
    [depth ControlNet: hint image (pixels) → conv stack, /8 → 4 feature maps, concatenated to the latent]
    conv_in → down levels (ResnetBlocks [+ attention], then a downsampling ResnetBlock)
            → mid (ResnetBlock, attention, ResnetBlock)
            → up levels (ResnetBlocks on [h, skip] [+ attention], then an upsampling ResnetBlock)
            → GroupNorm, SiLU, conv_out (epsilon and variance channels)

Karlo's decoder shares this trunk; it would replace `conditioning` (identity class embedding, text-projection
context) and pass a padding mask for its text tokens to the attention layers.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..engine.checkpoints import config_settings
from .timestep import TimestepMLP, timestep_embedding

HINT_FEATURES = 4  # channels the hint encoder adds to the latent (fixed in diffusers' ImageHintTimeEmbedding)
# The Kandinsky 2.2 decoders we build, by (in_channels, image_hint): conv_in reads the noisy latent (4 channels)
# plus, for inpainting, the masked image's latent (4) and the mask (1), or, for the depth ControlNet, the hint
# encoder's 4 feature maps.
_KINDS = {(4, False): "text2image", (9, False): "inpaint", (4 + HINT_FEATURES, True): "controlnet"}


@dataclass
class UNetConfig:
    in_channels: int = 4  # conv_in's input: 9 for inpainting, 8 for the ControlNet (see _KINDS)
    out_channels: int = 8  # epsilon and the learned-variance interpolation
    block_out_channels: tuple[int, ...] = (384, 768, 1152, 1536)
    attention_levels: tuple[bool, ...] = (False, True, True, True)  # which levels have attention after each resnet
    layers_per_block: int = 3
    head_dim: int = 64
    cross_attention_dim: int = 768  # width of the image context tokens
    image_embed_dim: int = 1280  # the prior's CLIP image embedding (diffusers: encoder_hid_dim)
    image_tokens: int = 32  # fixed by diffusers' ImageProjection
    groups: int = 32
    eps: float = 1e-5
    image_hint: bool = False  # reads a hint image, e.g. a depth map (diffusers' addition_embed_type "image_hint")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def kind(self) -> str:
        """Which decoder this is: "text2image", "inpaint" (forward's x carries the latent, the masked image's latent
        and the mask) or "controlnet" (forward needs a hint)."""
        return _KINDS[self.in_channels, self.image_hint]

    @property
    def sample_channels(self) -> int:
        """Channels of forward's `x`: in_channels less the hint features the UNet makes and concatenates itself
        (4 for text2image and controlnet, 9 for inpaint)."""
        return self.in_channels - HINT_FEATURES if self.image_hint else self.in_channels

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "UNetConfig":
        """Map a diffusers UNet2DConditionModel config.json dict; raise ValueError on settings we do not build.

        Keys that the blocks used here never read (use_linear_projection, upcast_attention, downsample_padding,
        transformer_layers_per_block, addition_embed_type_num_heads, ...) are ignored; keys diffusers does not
        know are refused (engine.checkpoints.config_settings).
        """
        config = config_settings(config, _DIFFUSERS_DEFAULTS, "UNet")
        _check_fixed_settings(config)
        attention_levels = _attention_levels(config)
        image_hint = _image_hint(config)
        return cls(
            in_channels=config["in_channels"],
            out_channels=config["out_channels"],
            block_out_channels=tuple(config["block_out_channels"]),
            attention_levels=attention_levels,
            layers_per_block=config["layers_per_block"],
            head_dim=config["attention_head_dim"],
            cross_attention_dim=config["cross_attention_dim"],
            image_embed_dim=config["encoder_hid_dim"],
            groups=config["norm_num_groups"],
            eps=config["norm_eps"],
            image_hint=image_hint,
        )


# Every UNet2DConditionModel setting with diffusers' default (0.42.1), for keys a config.json leaves out; None where
# diffusers takes several types (an int or a per-level list), which the checks above look at themselves.
_DIFFUSERS_DEFAULTS = dict(
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
_DOWN_BLOCKS = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}  # name → has attention
_UP_BLOCKS = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
# Kandinsky 2.2's choices where diffusers' default differs, so the key must be present.
_REQUIRED_SETTINGS = {
    "encoder_hid_dim_type": "image_proj",
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "resnet_time_scale_shift": "scale_shift",
}
# diffusers' defaults, which Kandinsky 2.2 keeps; older config.json files may omit the newer keys.
_DEFAULT_SETTINGS = {
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
_ABSENT_FEATURES = (
    "center_input_sample",
    "class_embed_type",
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


def _unsupported(config: dict[str, Any], key: str) -> ValueError:
    return ValueError(f"unsupported UNet setting {key}={config.get(key, '<missing>')!r}")


def _check_fixed_settings(config: dict[str, Any]) -> None:
    """The settings Kandinsky 2.2 fixes: its own choices, diffusers' defaults it keeps, features it leaves out, and
    single numbers where diffusers also takes per-level lists."""
    for key, value in _REQUIRED_SETTINGS.items():
        if config.get(key) != value:
            raise _unsupported(config, key)
    for key, value in _DEFAULT_SETTINGS.items():
        if config.get(key, value) != value:
            raise _unsupported(config, key)
    for key in _ABSENT_FEATURES:
        if config.get(key):
            raise _unsupported(config, key)
    for key in ("layers_per_block", "attention_head_dim", "cross_attention_dim", "encoder_hid_dim", "norm_num_groups"):
        if not isinstance(config.get(key), int):  # per-level lists and None are not built
            raise _unsupported(config, key)


def _attention_levels(config: dict[str, Any]) -> tuple[bool, ...]:
    """Which levels have attention, read from the block types; the up path must mirror the down path."""
    down_types, up_types = list(config.get("down_block_types", ())), list(config.get("up_block_types", ()))
    if not down_types or any(t not in _DOWN_BLOCKS for t in down_types):
        raise _unsupported(config, "down_block_types")
    attention_levels = tuple(_DOWN_BLOCKS[t] for t in down_types)
    if [_UP_BLOCKS.get(t) for t in reversed(up_types)] != list(attention_levels):
        raise _unsupported(config, "up_block_types")
    if len(config["block_out_channels"]) != len(down_types):
        raise _unsupported(config, "block_out_channels")
    return attention_levels


def _image_hint(config: dict[str, Any]) -> bool:
    """Whether the decoder reads a hint image: addition_embed_type "image" is the plain and inpainting decoders,
    "image_hint" the depth ControlNet; in_channels must be one of theirs (see _KINDS)."""
    if config.get("addition_embed_type") not in ("image", "image_hint"):
        raise _unsupported(config, "addition_embed_type")
    image_hint = config["addition_embed_type"] == "image_hint"
    if (config["in_channels"], image_hint) not in _KINDS:
        raise _unsupported(config, "in_channels")
    return image_hint


def downsample(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=2)


def upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second norm modulated by the embedding (scale-shift); optional resampling."""

    def __init__(self, cfg: UNetConfig, in_ch: int, out_ch: int, resample: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.resample = resample
        self.norm1 = nn.GroupNorm(cfg.groups, in_ch, eps=cfg.eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(cfg.time_embed_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(cfg.groups, out_ch, eps=cfg.eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """`emb` is the already SiLU-activated embedding [B, time_embed_dim]."""
        h = F.silu(self.norm1(x))
        if self.resample is not None:
            x, h = self.resample(x), self.resample(h)
        h = self.conv1(h)
        scale, shift = rearrange(self.time_emb_proj(emb), "b c -> b c 1 1").chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AddedKVAttention(nn.Module):
    """Self-attention over the pixels whose keys/values also include the context tokens (diffusers' added-KV
    attention); group norm before, residual after."""

    def __init__(self, cfg: UNetConfig, dim: int):
        super().__init__()
        self.heads = dim // cfg.head_dim
        self.group_norm = nn.GroupNorm(cfg.groups, dim, eps=1e-5)  # diffusers' Attention ignores norm_eps here
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(cfg.cross_attention_dim, dim)
        self.add_v_proj = nn.Linear(cfg.cross_attention_dim, dim)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))  # Sequential only to keep diffusers' key "to_out.0"

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        height = x.shape[2]
        pixels = rearrange(self.group_norm(x), "b c h w -> b (h w) c")
        # Context first, as diffusers orders them (softmax does not care, but summation order does, slightly).
        k = torch.cat([self.add_k_proj(context), self.to_k(pixels)], dim=1)
        v = torch.cat([self.add_v_proj(context), self.to_v(pixels)], dim=1)
        q, k, v = (rearrange(t, "b n (heads d) -> b heads n d", heads=self.heads) for t in (self.to_q(pixels), k, v))
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b heads n d -> b n (heads d)")
        return x + rearrange(self.to_out(out), "b (h w) c -> b c h w", h=height)


class DownLevel(nn.Module):
    def __init__(self, cfg: UNetConfig, in_ch: int, out_ch: int, attention: bool, last: bool):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(ResnetBlock(cfg, in_ch if i == 0 else out_ch, out_ch) for i in range(n))
        self.attentions = nn.ModuleList(AddedKVAttention(cfg, out_ch) for _ in range(n) if attention)
        self.downsamplers = None if last else nn.ModuleList([ResnetBlock(cfg, out_ch, out_ch, downsample)])

    def forward(self, h: Tensor, emb: Tensor, context: Tensor, skips: list[Tensor]) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, emb)
            if self.attentions:
                h = self.attentions[i](h, context)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h, emb)
            skips.append(h)
        return h


class MidBlock(nn.Module):
    def __init__(self, cfg: UNetConfig, ch: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cfg, ch, ch), ResnetBlock(cfg, ch, ch)])
        self.attentions = nn.ModuleList([AddedKVAttention(cfg, ch)])

    def forward(self, h: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        h = self.resnets[0](h, emb)
        return self.resnets[1](self.attentions[0](h, context), emb)


class UpLevel(nn.Module):
    """One resnet per skip connection it consumes: layers_per_block + 1 of them."""

    def __init__(self, cfg: UNetConfig, in_ch: int, skip_chs: list[int], out_ch: int, attention: bool, last: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(cfg, (in_ch if i == 0 else out_ch) + skip_ch, out_ch) for i, skip_ch in enumerate(skip_chs)
        )
        self.attentions = nn.ModuleList(AddedKVAttention(cfg, out_ch) for _ in skip_chs if attention)
        self.upsamplers = None if last else nn.ModuleList([ResnetBlock(cfg, out_ch, out_ch, upsample)])

    def forward(self, h: Tensor, emb: Tensor, context: Tensor, skips: list[Tensor]) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if self.attentions:
                h = self.attentions[i](h, context)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, emb)
        return h


class ImageContext(nn.Module):
    """Image embedding → `tokens` context tokens (diffusers' ImageProjection)."""

    def __init__(self, embed_dim: int, dim: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.image_embeds = nn.Linear(embed_dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_embeds: Tensor) -> Tensor:
        return self.norm(rearrange(self.image_embeds(image_embeds), "b (n d) -> b n d", n=self.tokens))


class ImageTimeEmbedding(nn.Module):
    def __init__(self, embed_dim: int, time_embed_dim: int):
        super().__init__()
        self.image_proj = nn.Linear(embed_dim, time_embed_dim)
        self.image_norm = nn.LayerNorm(time_embed_dim)

    def forward(self, image_embeds: Tensor) -> Tensor:
        return self.image_norm(self.image_proj(image_embeds))


# The hint encoder's convolutions (in, out, stride), SiLU between them: three stride-2 steps bring pixels to
# latent size (/8). The widths are fixed in diffusers, not read from the config.
_HINT_CONVS = ((3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2), (256, 4, 1))


class ImageHintTimeEmbedding(ImageTimeEmbedding):
    """The depth ControlNet's add_embedding: the image-time embedding plus a hint encoder (diffusers'
    ImageHintTimeEmbedding; the Sequential keeps its keys, input_hint_block.0, .2, … .14)."""

    def __init__(self, embed_dim: int, time_embed_dim: int):
        super().__init__(embed_dim, time_embed_dim)
        layers: list[nn.Module] = []
        for cin, cout, stride in _HINT_CONVS:
            layers += [nn.SiLU()] if layers else []
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
        self.input_hint_block = nn.Sequential(*layers)

    def encode_hint(self, hint: Tensor) -> Tensor:
        """hint [B, 3, 8h, 8w] → [B, HINT_FEATURES, h, w]."""
        return self.input_hint_block(hint)


class KandinskyUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        chs = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepMLP(chs[0], cfg.time_embed_dim)
        self.encoder_hid_proj = ImageContext(cfg.image_embed_dim, cfg.cross_attention_dim, cfg.image_tokens)
        embedding = ImageHintTimeEmbedding if cfg.image_hint else ImageTimeEmbedding
        self.add_embedding = embedding(cfg.image_embed_dim, cfg.time_embed_dim)

        last = len(chs) - 1
        skip_chs = [chs[0]]  # channels of each skip tensor, in the order the down path stores them
        self.down_blocks = nn.ModuleList()
        for level, (ch, attention) in enumerate(zip(chs, cfg.attention_levels, strict=True)):
            self.down_blocks.append(DownLevel(cfg, skip_chs[-1], ch, attention, last=level == last))
            skip_chs += [ch] * (cfg.layers_per_block + (level != last))
        self.mid_block = MidBlock(cfg, chs[-1])
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(len(chs))):
            level_skips = [skip_chs.pop() for _ in range(cfg.layers_per_block + 1)]
            in_ch = chs[min(level + 1, last)]  # output of the level below (the mid block for the deepest)
            attention = cfg.attention_levels[level]
            self.up_blocks.append(UpLevel(cfg, in_ch, level_skips, chs[level], attention, last=level == 0))
        self.conv_norm_out = nn.GroupNorm(cfg.groups, chs[0], eps=cfg.eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

    def conditioning(self, timestep: Tensor, image_embeds: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """The embedding every resnet is modulated by, and the context tokens every attention layer attends to."""
        dtype = self.conv_in.weight.dtype
        timestep = torch.as_tensor(timestep, device=image_embeds.device).reshape(-1).expand(batch)
        # Sinusoids in float32 (fp16 cannot resolve timesteps near 1000), then the weights' dtype.
        emb = self.time_embedding(timestep_embedding(timestep, self.config.block_out_channels[0]).to(dtype))
        image_embeds = image_embeds.to(dtype)
        return emb + self.add_embedding(image_embeds), self.encoder_hid_proj(image_embeds)

    def with_hint(self, x: Tensor, hint: Tensor | None) -> Tensor:
        """conv_in's input: x, followed by the hint's features for the ControlNet."""
        if not self.config.image_hint:
            if hint is not None:
                raise ValueError("this decoder takes no hint: only the depth ControlNet decoder reads one")
            return x
        if hint is None:
            raise ValueError("this decoder reads a hint image (depth ControlNet): connect one")
        batch, _, height, width = x.shape
        if tuple(hint.shape) != (batch, 3, 8 * height, 8 * width):
            raise ValueError(
                f"the hint is {' × '.join(map(str, hint.shape))}, but the latent "
                f"{' × '.join(map(str, x.shape))} needs a hint of {batch} × 3 × {8 * height} × {8 * width}"
            )
        features = self.add_embedding.encode_hint(hint.to(self.conv_in.weight.dtype))
        return torch.cat([x, features], dim=1)

    def forward(self, x: Tensor, timestep: Tensor, image_embeds: Tensor, hint: Tensor | None = None) -> Tensor:
        """x [B, sample_channels, H, W] with H, W multiples of 2^(levels-1); timestep [B] or 0-d; image_embeds
        [B, D]; hint [B, 3, 8H, 8W] for the ControlNet only (pixels, as the pipeline passes them: a depth map in
        0..1 on each channel), None otherwise."""
        factor = 2 ** (len(self.config.block_out_channels) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"latent size {tuple(x.shape[2:])} must be a multiple of {factor}")
        emb, context = self.conditioning(timestep, image_embeds, x.shape[0])
        emb = F.silu(emb)  # every consumer (each resnet's time_emb_proj) applies SiLU first: do it once

        h = self.conv_in(self.with_hint(x, hint))
        skips = [h]
        for level in self.down_blocks:
            h = level(h, emb, context, skips)
        h = self.mid_block(h, emb, context)
        for level in self.up_blocks:
            h = level(h, emb, context, skips)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
