"""Karlo v1 alpha (kakaobrain), DALL·E 2 as the paper drew it, as one family: loading (checkpoints → modules),
sampling (UnCLIPScheduler per stage), stages (the one implementation of prior, 64 px decoder and super-resolution
sampling, as plain functions over tensors) and api (Karlo, Request, VariationRequest: the Python API).

from dalle_nodes.pipelines.karlo import Karlo
"""

from .api import Karlo, Request, VariationRequest
from .loading import DECODER_SIZE, REPO, SUPER_RES_SIZE, VARIATIONS_REPO

__all__ = ["DECODER_SIZE", "REPO", "SUPER_RES_SIZE", "VARIATIONS_REPO", "Karlo", "Request", "VariationRequest"]
