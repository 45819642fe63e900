"""loracam: a LoRA photo studio (prepare, train, compose, grid, finish, judge).

Layers, each importing only its own and those below (tests/test_layering.py holds it):

1. the engine: ``models`` (the family table, loaders, upscaler files, ``models.builtin``'s tables of the models
   loracam ships), ``lora``, ``prompts``, ``control``, ``generate`` (rendering, hires fix, upscaling);
2. finishing and judging: ``finish`` (detail passes; ``finish.gen`` is `gen` with them, handing the engine an
   ``after`` step), ``judge``, ``grid``, ``tune``; ``data`` and ``train`` beside them;
3. ``studio`` (jobs), then ``workers`` and ``web``, then the CLI (``cli*.py``), a thin shell over all of them.

The toy world (``toy``) provides models like files on disk: the stages find its upscaler and locator through
``models.builtin`` by name.
"""

from loracam.numerics import set_process_defaults as _set_process_defaults

__version__ = "0.1.0"

# Before anything loads torch: MKL reads its reproducibility mode once, at its first call (loracam.numerics).
_set_process_defaults()
