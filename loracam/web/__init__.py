"""The web UI (``loracam web``): the only package that imports gradio. It talks to the engine through the
studio's job store (jobs run in the studio's worker process, never in the web server) and the engine's
functions (generation, the LoRA library, infotext)."""
