"""ComfyUI-facing node classes, one module per stage; thin: convert ComfyUI types, call pipelines/, convert back."""

from .conditioning import DalleImageEmbedsToConditioning
from .decoder import DalleDecoderSample
from .depth import DalleDepthMap, DalleLoadDepthModel
from .embeds import DalleImageEncode, DalleMixEmbeds
from .karlo import DalleKarloDecoderSample, DalleKarloSuperRes, DalleLoadKarloDecoder
from .loaders import DalleLoadCLIPVision, DalleLoadDecoder, DalleLoadImageEncoder, DalleLoadPrior
from .mini import DalleLoadMini, DalleTokenSample, DalleVQGANDecode
from .prior import DallePriorSample
from .rerank import DalleCLIPRerank, DalleLoadCLIP
from .text import DalleTextEncode
from .translate import DalleTranslatePrompt
from .upscale import DalleGANUpscale, DalleLoadUpscaler
from .vae import DalleVQDecode, DalleVQEncode

NODE_CLASS_MAPPINGS = {
    "DalleLoadPrior": DalleLoadPrior,
    "DalleLoadDecoder": DalleLoadDecoder,
    "DalleLoadImageEncoder": DalleLoadImageEncoder,
    "DalleTextEncode": DalleTextEncode,
    "DallePriorSample": DallePriorSample,
    "DalleImageEncode": DalleImageEncode,
    "DalleMixEmbeds": DalleMixEmbeds,
    "DalleDecoderSample": DalleDecoderSample,
    "DalleVQDecode": DalleVQDecode,
    "DalleVQEncode": DalleVQEncode,
    "DalleImageEmbedsToConditioning": DalleImageEmbedsToConditioning,
    "DalleLoadCLIPVision": DalleLoadCLIPVision,
    "DalleLoadMini": DalleLoadMini,
    "DalleTokenSample": DalleTokenSample,
    "DalleVQGANDecode": DalleVQGANDecode,
    "DalleLoadUpscaler": DalleLoadUpscaler,
    "DalleGANUpscale": DalleGANUpscale,
    "DalleLoadCLIP": DalleLoadCLIP,
    "DalleCLIPRerank": DalleCLIPRerank,
    "DalleLoadDepthModel": DalleLoadDepthModel,
    "DalleDepthMap": DalleDepthMap,
    "DalleLoadKarloDecoder": DalleLoadKarloDecoder,
    "DalleKarloDecoderSample": DalleKarloDecoderSample,
    "DalleKarloSuperRes": DalleKarloSuperRes,
    "DalleTranslatePrompt": DalleTranslatePrompt,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DalleLoadPrior": "Load DALL·E 2 Prior (Kandinsky 2.2)",
    "DalleLoadDecoder": "Load DALL·E 2 Decoder (Kandinsky 2.2)",
    "DalleLoadImageEncoder": "Load DALL·E 2 Image Encoder (CLIP ViT-bigG)",
    "DalleTextEncode": "DALL·E Text Encode",
    "DallePriorSample": "DALL·E Prior Sample",
    "DalleImageEncode": "DALL·E Image Encode (CLIP)",
    "DalleMixEmbeds": "DALL·E Mix Image Embeds",
    "DalleDecoderSample": "DALL·E Decoder Sample",
    "DalleVQDecode": "DALL·E VQ Decode (MoVQ)",
    "DalleVQEncode": "DALL·E VQ Encode (MoVQ)",
    "DalleImageEmbedsToConditioning": "DALL·E Image Embeds To Conditioning",
    "DalleLoadCLIPVision": "Load DALL·E 2 CLIP Vision (Kandinsky 2.2 prior)",
    "DalleLoadMini": "Load DALL·E Mini/Mega (DALL·E 1)",
    "DalleTokenSample": "DALL·E Mini Token Sample",
    "DalleVQGANDecode": "DALL·E Mini VQGAN Decode",
    "DalleLoadUpscaler": "Load GAN Upscaler (Hub)",
    "DalleGANUpscale": "DALL·E GAN Upscale (tiled)",
    "DalleLoadCLIP": "Load CLIP (reranker)",
    "DalleCLIPRerank": "DALL·E CLIP Rerank (best of N)",
    "DalleLoadDepthModel": "Load Depth Model (Hub, for the depth ControlNet)",
    "DalleDepthMap": "DALL·E Depth Map (ControlNet hint)",
    "DalleLoadKarloDecoder": "Load DALL·E 2 Decoder (Karlo)",
    "DalleKarloDecoderSample": "DALL·E Karlo Decoder Sample (64 px)",
    "DalleKarloSuperRes": "DALL·E Karlo Super-Resolution (256 px)",
    "DalleTranslatePrompt": "DALL·E Translate Prompt",
}
