"""Control maps saved beside the images they steered, and found there again by ``gen --from``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def map_path(image_path: Path, index: int) -> Path:
    """``00012-42.png`` -> ``00012-42-control0.png``."""
    image_path = Path(image_path)
    return image_path.with_name(f"{image_path.stem}-control{index}.png")


def save_maps(image_path: Path, maps) -> list[Path]:
    """Write each map (lossless, so a re-render from it is exact) next to its image; never overwrites. A None
    (a hires tile unit, steered by each image's own enlarged first pass) is left out, its number kept free."""
    from loracam.generate.images import png_with_text
    from loracam.io import atomic_write_bytes

    out = []
    for i, m in enumerate(maps):
        if m is None:
            continue
        out.append(atomic_write_bytes(map_path(image_path, i), png_with_text(Image.fromarray(np.asarray(m)), {})))
    return out


# sd-webui-controlnet module names -> loracam's types (a module loracam lacks re-renders from its saved map)
MODULE_KINDS = {"openpose": "openpose", "openpose_full": "openpose", "dw_openpose_full": "openpose",
                "canny": "canny", "tile_resample": "tile", "none": "image"}


def units_from_infotext(params: dict[str, str], image_path: Path | None) -> tuple:
    """The ControlNet units an infotext records, each steered by the map saved beside the image.

    The infotext names the model and settings but not the picture that steered (A1111 never writes it),
    so the map loracam saved next to the PNG stands in for it, already preprocessed: the re-render sees the
    same pixels. Without it the user is told to give the ControlNet again."""
    from loracam.control.units import ControlUnit, units_from_infotext as parse_units
    from loracam.errors import LoracamError

    units = []
    for n, fields in parse_units(params):
        module = str(fields.get("Module", "none"))
        saved = map_path(image_path, n) if image_path is not None else None
        if module == "tile_resample" and (saved is None or not saved.exists()):
            saved = None  # a hires tile unit: it steers by the image's own enlarged first pass again
        elif saved is None or not saved.exists():
            raise LoracamError(
                f"this image was made with ControlNet {n} ({module}, {fields.get('Model', 'unknown model')}), and its "
                f"control map {saved.name if saved else 'NNNNN-SEED-controlN.png'} is not next to it: give the "
                "ControlNet again with --controlnet TYPE:SOURCE (it replaces the infotext's units)")
        try:
            units.append(ControlUnit(
                kind=MODULE_KINDS.get(module, "image"), source=str(saved) if saved else "", premade=saved is not None,
                weight=float(fields.get("Weight", 1)), start=float(fields.get("Guidance Start", 0)),
                end=float(fields.get("Guidance End", 1)), model=str(fields.get("Model", "")),
                resize=str(fields.get("Resize Mode", "Crop and Resize")),
                processor_res=int(fields.get("Processor Res", -1)), threshold_a=float(fields.get("Threshold A", -1)),
                threshold_b=float(fields.get("Threshold B", -1)), mode=str(fields.get("Control Mode", "Balanced")),
                union=str(fields.get("Union Control Type", "")).replace("Unknown", ""),
            ))
        except (TypeError, ValueError) as exc:
            raise LoracamError(f"the image's ControlNet {n} entry has a malformed value ({exc})") from None
    return tuple(units)
