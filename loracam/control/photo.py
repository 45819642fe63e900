"""An OpenPose pose read from a photo, with mediapipe's BlazePose (the model loracam already uses for crops).

A landmark counts when mediapipe is reasonably sure of it (visibility >= 0.5) and it lies inside the photo:
BlazePose also guesses the places of cut-off limbs, and a guessed limb in the control map would make
ControlNet draw one. Only the most prominent person is found (BlazePose finds one per photo).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from loracam.control.openpose import N_POINTS, NAMES, Pose, from_mediapipe
from loracam.errors import LoracamError

MIN_VISIBILITY = 0.5
INSTEAD = ("use a photo where one person is clearly seen (face included: the detector looks for a face first), "
           "or a pose template (`loracam pose --list`, then `loracam pose --template NAME`), or an OpenPose JSON "
           "file")


def pose_from_photo(image: Image.Image, analyzer=None, where: str = "the photo") -> Pose:
    """The pose of the person in ``image`` on a canvas of the photo's size; LoracamError when none is found.

    ``analyzer`` is a loracam.data.pose.PoseAnalyzer to reuse (loading mediapipe takes a moment); without one
    a PoseAnalyzer is made for this photo and closed after it.
    """
    if analyzer is None:
        from loracam.data.pose import PoseAnalyzer

        with PoseAnalyzer() as own:
            return pose_from_photo(image, own, where)
    found = analyzer.detect(image)
    if found is None:
        raise LoracamError(f"no person was found in {where}; {INSTEAD}")
    person = from_mediapipe(found.points, _seen(found.points, found.visibility, image.size), image.size)
    if not person.present():  # a detection whose every point is unsure or outside: nothing worth drawing
        raise LoracamError(f"no person was clearly seen in {where} (every body point was unsure or outside "
                           f"the frame); {INSTEAD}")
    return Pose((person,), image.width, image.height)


def _seen(points: np.ndarray, visibility: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Which of mediapipe's landmarks ([33, 2] pixels) count: sure enough, and inside the photo."""
    x, y = points[:, 0], points[:, 1]
    inside = (x >= 0) & (x <= size[0]) & (y >= 0) & (y <= size[1])
    return inside & (np.asarray(visibility) >= MIN_VISIBILITY)


def keypoint_count(pose: Pose) -> tuple[int, int]:
    """(points found, points possible) over every person of ``pose``."""
    return sum(len(p.present()) for p in pose.people), N_POINTS * len(pose.people)


def describe(pose: Pose) -> str:
    """A line for the user: how many keypoints were found, and which are missing when a few are."""
    found, total = keypoint_count(pose)
    people = f"{len(pose.people)} {'person' if len(pose.people) == 1 else 'people'}"
    text = f"{found} of {total} keypoints ({people})"
    if len(pose.people) == 1 and 0 < total - found <= 6:  # a longer list says no more than "cut off"
        missing = [NAMES[k].replace("_", " ") for k, p in enumerate(pose.people[0].points) if p is None]
        text += f"; missing: {', '.join(missing)}"
    return text
