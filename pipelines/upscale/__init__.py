"""GAN upscalers (Real-ESRGAN and every other single-image architecture spandrel knows): `loading` finds and safely
reads the weight files, `stages` runs the tiled upscale, `api` offers it as plain Python (`Upscaler`)."""

from .api import Upscaler
from .loading import CUSTOM, PRESETS, Preset, load_upscaler, locate
from .stages import UpscaleSettings, upscale

__all__ = ["CUSTOM", "PRESETS", "Preset", "UpscaleSettings", "Upscaler", "load_upscaler", "locate", "upscale"]
