"""One module per system (load + sample as plain Python; the public API) and the samplers they share."""
