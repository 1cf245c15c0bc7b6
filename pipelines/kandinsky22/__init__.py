"""Kandinsky 2.2, the open DALL·E 2, as one family: loading (checkpoints → modules), stages (the one implementation
of text encoding, prior and decoder sampling, MoVQ coding; starts: where the decoder starts), api (Kandinsky22 and
Request, the Python API), memory (what each stage needs beside its weights) and vq_decode (MoVQ decoding within
the memory there is). The nodes, the command line and the images API all run the stages.

from dalle_nodes.pipelines.kandinsky22 import Kandinsky22
"""

from .api import Kandinsky22, Request
from .loading import CONTROLNET_REPO, DECODER_REPO, INPAINT_REPO, PRIOR_REPO

__all__ = ["CONTROLNET_REPO", "DECODER_REPO", "INPAINT_REPO", "PRIOR_REPO", "Kandinsky22", "Request"]
