"""ControlNet: control maps (openpose, canny, tile, a ready image), ControlNet models, and their guidance in
loracam's engine. Nothing here imports the generate package at import time; the engine calls in."""
