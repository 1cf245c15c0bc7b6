"""ComfyUI-facing node classes, one module per stage; thin: validate, call models/, convert types."""
from .decoder import DalleDecoderSample
from .loaders import DalleLoadDecoder, DalleLoadPrior
from .prior import DallePriorSample
from .text import DalleTextEncode
from .vae import DalleVQDecode, DalleVQEncode

NODE_CLASS_MAPPINGS = {
    "DalleLoadPrior": DalleLoadPrior,
    "DalleLoadDecoder": DalleLoadDecoder,
    "DalleTextEncode": DalleTextEncode,
    "DallePriorSample": DallePriorSample,
    "DalleDecoderSample": DalleDecoderSample,
    "DalleVQDecode": DalleVQDecode,
    "DalleVQEncode": DalleVQEncode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DalleLoadPrior": "Load DALL·E 2 Prior (Kandinsky 2.2)",
    "DalleLoadDecoder": "Load DALL·E 2 Decoder (Kandinsky 2.2)",
    "DalleTextEncode": "DALL·E Text Encode",
    "DallePriorSample": "DALL·E Prior Sample",
    "DalleDecoderSample": "DALL·E Decoder Sample",
    "DalleVQDecode": "DALL·E VQ Decode (MoVQ)",
    "DalleVQEncode": "DALL·E VQ Encode (MoVQ)",
}
