"""Talking to a running ComfyUI over HTTP: the client, UI → API workflow conversion, the queue command."""
