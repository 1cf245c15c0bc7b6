"""DALL·E Mini / Mega, the open DALL·E 1 (kuprel/min-dalle): `loading` reads the checkpoint files into modules,
`stages` samples image tokens from text and decodes them to pixels, `api` offers the chain as plain Python
(`DalleMini`, `Request`)."""

from .api import DalleMini, Request
from .loading import REPO

__all__ = ["REPO", "DalleMini", "Request"]
