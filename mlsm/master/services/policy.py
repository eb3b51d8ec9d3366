"""Submit-time policy for container jobs: which images and host mounts a caller may use.

Admins set both lists with ``mlsm settings set --image-pattern ... --mount-allow ...``
(:class:`~mlsm.wire.api.LabSettings`). Admins themselves may run any image and mount any
absolute host path; members are held to the lists. The master cannot see node paths, so
mounts are checked lexically here (``..`` removed) and again with symlinks resolved by an
agent that is given mount roots.
"""

from __future__ import annotations

from mlsm.errors import PermissionDenied
from mlsm.master.security import Principal
from mlsm.master.services.settings import SettingsService
from mlsm.policy import image_allowed, mount_allowed

SET_IMAGES_HINT = "an admin sets them with `mlsm settings set --image-pattern PATTERN`"
SET_MOUNTS_HINT = "an admin sets them with `mlsm settings set --mount-allow PATH`"


class JobPolicy:
    """Checks :func:`~mlsm.master.jobspec.build_submission` makes for every ``--env docker``
    submission (a :class:`~mlsm.master.jobspec.SubmitPolicy`)."""

    def __init__(self, settings: SettingsService) -> None:
        self.settings = settings

    def check_image(self, principal: Principal, image: str) -> None:
        """Members may run only images matching the lab's patterns (none set: any image)."""
        patterns = self.settings.current.image_patterns
        if principal.is_admin or not patterns or image_allowed(image, patterns):
            return
        raise PermissionDenied(
            f"image {image} is not allowed for members; allowed images: "
            f"{', '.join(patterns)} ({SET_IMAGES_HINT})",
            details={"path": "image", "image": image, "allowed": list(patterns)},
        )

    def check_mount(self, principal: Principal, source: str) -> None:
        """Members may mount only host paths under the lab's ``mount_allow`` list."""
        if principal.is_admin:
            if source.startswith("/") and "\x00" not in source:
                return
            raise PermissionDenied(
                f"mount source {source!r} must be an absolute host path",
                details={"path": "mounts", "source": source},
            )
        allowed = self.settings.current.mount_allow
        if mount_allowed(source, allowed, resolve=False):
            return
        where = (
            f"members may mount only paths under {', '.join(allowed)}"
            if allowed
            else "members may mount no host paths (none are allowed)"
        )
        raise PermissionDenied(
            f"host path {source} may not be mounted: {where} ({SET_MOUNTS_HINT})",
            details={"path": "mounts", "source": source, "allowed": list(allowed)},
        )


__all__ = ["JobPolicy"]
