"""Bulk bytes on the master: relay pipes (:mod:`.pipes`) carry a source agent's answer to a
puller with bounded memory; dataset copies and the other tree transfers are built on them."""

from mlsm.master.services.bulk.pipes import Pipe, PipeClosed, Pipes, answer_stream

__all__ = ["Pipe", "PipeClosed", "Pipes", "answer_stream"]
