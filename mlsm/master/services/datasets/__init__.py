"""Datasets on the master, one module per responsibility.

- :mod:`.catalog`: what data lives on which node (agents' reports, metadata people edit);
- :mod:`.operations`: starting imports, copies and moves, deletes and digests;
- :mod:`.transfers`: those changes while they run on the agents, and their rows;
- :mod:`.relay`: a copy's bytes passing through the master (a target's pulls, relayed
  from the source through relay pipes).
"""

from mlsm.master.services.datasets.catalog import DatasetCatalog
from mlsm.master.services.datasets.operations import DatasetOperations
from mlsm.master.services.datasets.relay import CopyRelay
from mlsm.master.services.datasets.transfers import LiveTransfer, Transfers

__all__ = [
    "CopyRelay",
    "DatasetCatalog",
    "DatasetOperations",
    "LiveTransfer",
    "Transfers",
]
