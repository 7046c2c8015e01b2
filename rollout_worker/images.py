"""Which image a request is sampled with: its task's (`RolloutRequest.image_key`, a multi-task
batch) or the worker's one image."""

from __future__ import annotations


def pick_image(request, image, version: int, images: dict | None):
    """(image, version) of `request`: `images[request.image_key]` where it names one."""
    if request.image_key:
        if not images or request.image_key not in images:
            raise RuntimeError(
                f"request {request.request_id} asks for the image of task {request.image_key!r}, "
                "which this worker was never sent (set_image with that key first)"
            )
        return images[request.image_key]
    return image, version
