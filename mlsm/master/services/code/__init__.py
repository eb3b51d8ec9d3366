"""Code in: the lab's code store (snapshots people submit) and users' projects on nodes."""

from mlsm.master.services.code.projects import Projects
from mlsm.master.services.code.store import UPLOAD_PIN_S, CodeStore

__all__ = ["UPLOAD_PIN_S", "CodeStore", "Projects"]
