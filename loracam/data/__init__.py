"""Dataset preparation: photo intake, faces, body-pose crops, captions, buckets, kohya layout, manifest."""
