"""A job's outputs on its node, and the node's disk hygiene.

- :mod:`.disk`: what mlsm keeps on this node's disk (job directories, projects, code
  cache), measured by descriptor walks, for the node info;
- :mod:`.pins`: directories in use by something other than their job (a fetch being
  served), which no removal touches;
- :mod:`.sweeper`: the ``sweep_job_dirs`` and ``purge_job_dir`` commands: removes finished
  jobs' directories as retention allows, never one in use, and reports each removal.
"""

from agent.outputs.disk import DiskMeter
from agent.outputs.pins import JobDirPins
from agent.outputs.sweeper import JobDirSweeper

__all__ = ["DiskMeter", "JobDirPins", "JobDirSweeper"]
